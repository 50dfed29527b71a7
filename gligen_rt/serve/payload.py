"""HTTP request bodies -> GenerationRequest: size limit, content types, images as base64 or multipart.

The body is the `--request` JSON (gligen_rt/core/request.py) with one difference: every image field
(`objects[i].image`, `condition`, `inpaint_image`, `style_image`) holds the image itself, as base64
or a data URL (``data:image/png;base64,...``), never a path; the server does not read files a
client names. multipart/form-data works too: a `request` field with the JSON, and file parts named
`condition`, `inpaint_image`, `style_image` or `objects[i].image` (they set those fields).

Uploaded images are checked to be images (Pillow) and written into a per-request folder that the
caller deletes when the job is done. Every mistake is an HttpError: one line and its status
(400 unparsable, 413 too large, 415 content type, 422 validation), the CLI's message where the CLI
has one.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from gligen_rt.core.errors import RequestError
from gligen_rt.core.request import GenerationRequest, request_from_json

MAX_IMAGE_PIXELS = 4096 * 4096  # an uploaded image larger than this is refused (decompression bombs)
IMAGE_KEYS = ("condition", "inpaint_image", "style_image")
_OBJECT_IMAGE = re.compile(r"^objects\[(\d+)\]\.image$")
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)


class HttpError(RequestError):
    """A bad HTTP request: `status` (4xx) and a one-line message saying what is wrong and the fix."""

    def __init__(self, status: int, message: str, kind: str = "validation") -> None:
        super().__init__(" ".join(message.splitlines()))
        self.status = status
        self.kind = kind


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The whole body from an ASGI byte stream, refusing (413) more than `limit` bytes.

    Hand-written rather than Starlette's body-limit middleware because that one answers in plain
    text; ours answers with the server's one-line JSON error like every other refusal.
    """
    too_large = HttpError(
        413,
        f"the request body is larger than {limit} bytes: send smaller images (or start the server with a larger --max-body-mb)",
        "body_too_large",
    )
    if content_length is not None:
        try:
            if int(content_length) > limit:
                raise too_large
        except ValueError:
            raise HttpError(
                400, f"Content-Length {content_length!r} is not a number", "bad_request"
            ) from None
    body = bytearray()
    async for chunk in chunks:
        body.extend(chunk)
        if len(body) > limit:
            raise too_large
    return bytes(body)


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json` (lower case; '' when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_image(data: bytes, what: str) -> str:
    """Check that `data` is an image Pillow can read; its file suffix (".png", ".jpeg", ...)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            fmt = (im.format or "png").lower()
            if w * h > MAX_IMAGE_PIXELS:
                raise HttpError(
                    422,
                    f"{what} is {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS} this server takes: send a smaller image",
                )
            im.verify()
    except HttpError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise HttpError(
            422, f"{what} is not an image Pillow can read: send a PNG or JPEG (base64 or a file part)"
        ) from None
    return "." + fmt


def decode_base64(text: str, what: str) -> bytes:
    """A data URL or plain base64 -> bytes; anything else (e.g. a file path) is a one-line 422."""
    payload = _DATA_URL.sub("", text.strip(), count=1)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(
            422,
            f"{what} must be an image as base64 or a data URL (data:image/png;base64,...); the server does not read file paths",
        ) from None


class Workdir:
    """Writes a request's uploaded images into one folder (created on first write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def save(self, data: bytes, what: str) -> str:
        if not data:
            raise HttpError(422, f"{what} is empty: send the image's bytes")
        suffix = check_image(data, what)
        self.path.mkdir(parents=True, exist_ok=True)
        self.count += 1
        out = self.path / f"upload{self.count}{suffix}"
        out.write_bytes(data)
        return str(out)


def _replace_images(d: dict[str, Any], files: Mapping[str, bytes], work: Workdir) -> dict[str, Any]:
    """A copy of the request dict whose image fields are paths of saved images."""
    d = dict(d)
    for key in IMAGE_KEYS:
        if key in files:
            d[key] = work.save(files[key], key)
        elif isinstance(d.get(key), str):
            d[key] = work.save(decode_base64(d[key], key), key)
    objects = d.get("objects")
    object_files = {int(m.group(1)): v for k, v in files.items() if (m := _OBJECT_IMAGE.match(k))}
    if isinstance(objects, list):
        objects = [dict(o) if isinstance(o, Mapping) else o for o in objects]
        for i, o in enumerate(objects):
            if not isinstance(o, dict):
                continue
            what = f"objects[{i}].image"
            if i in object_files:
                o["image"] = work.save(object_files.pop(i), what)
            elif isinstance(o.get("image"), str):
                o["image"] = work.save(decode_base64(o["image"], what), what)
        d["objects"] = objects
    if object_files:
        i = min(object_files)
        raise HttpError(
            422, f"file part objects[{i}].image has no object {i} in 'request': add the object first"
        )
    return d


def parse_json(
    body: bytes,
    work: Workdir,
    files: Mapping[str, bytes] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> GenerationRequest:
    """A JSON request body (+ multipart file parts) -> GenerationRequest (not yet validated against a model).

    defaults: the served model's own values for keys the body leaves out (its guidance scale)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "the request body is not UTF-8 text: send UTF-8 JSON", "bad_json") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise HttpError(
            400,
            f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
            "bad_json",
        ) from None
    if not isinstance(data, dict):
        raise HttpError(
            422, f'the request body must be a JSON object {{"prompt": ...}}, got {type(data).__name__}'
        )
    data = _replace_images({**(defaults or {}), **data}, files or {}, work)
    try:
        return request_from_json(data)
    except HttpError:
        raise
    except RequestError as e:
        raise HttpError(422, str(e)) from None


def parse_form(
    fields: Mapping[str, Any], work: Workdir, defaults: Mapping[str, Any] | None = None
) -> GenerationRequest:
    """multipart/form-data: `request` (JSON text) and image file parts -> GenerationRequest.

    fields: {name: str | bytes}; bytes for file parts. defaults: as for `parse_json`.
    """
    allowed = ("request", *IMAGE_KEYS)
    for name in fields:
        if name not in allowed and not _OBJECT_IMAGE.match(name):
            raise HttpError(
                422,
                f"unknown form field {name!r}: send 'request' (the JSON) and file parts named {', '.join(IMAGE_KEYS)} or objects[i].image",
            )
    if "request" not in fields:
        raise HttpError(422, "the form has no 'request' field: put the request JSON in a field named request")
    req = fields["request"]
    body = req if isinstance(req, bytes) else str(req).encode("utf-8")
    files = {k: v for k, v in fields.items() if k != "request"}
    for k, v in files.items():
        if not isinstance(v, bytes):
            raise HttpError(422, f"form field {k!r} must be a file part (the image's bytes)")
    return parse_json(body, work, files, defaults)
