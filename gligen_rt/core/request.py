"""A generation request: frozen dataclasses, validation against a model, and the JSON form.

Torch-free: shared by the PyTorch reference pipeline and the runtime.

Coordinates are normalised to the output image: boxes are ``(x0, y0, x1, y1)`` with
``0 <= x0 < x1 <= 1`` and ``0 <= y0 < y1 <= 1``; keypoints are ``(x, y)`` in ``[0, 1]`` in COCO order
(17 per person). Every user mistake is reported as a :class:`RequestError` whose message is one
line saying what is wrong and how to fix it.

JSON form (``request_from_json`` / ``request_to_json``)::

    {"prompt": "a cat and a dog", "negative_prompt": "",
     "objects": [{"phrase": "a cat", "box": [0.1, 0.2, 0.5, 0.9], "image": "cat.png"}],
     "persons": [{"keypoints": [[0.5, 0.1], null, ...]}],          # 17 entries per person
     "condition": "edges.png", "inpaint_image": "room.png", "style_image": "style.png",
     "seed": 1, "steps": 50, "guidance": 7.5, "sampler": "plms",
     "beta": 0.3,                      # or "alpha_type": [0.3, 0.0, 0.7], not both
     "height": 512, "width": 512, "num_images": 1,
     "feature_cache": 3,                # optional: reuse the deep UNet features on plain steps
     "feature_cache_grounded": 0}       # optional: the same on the grounded steps (off: 0)

Every key but ``prompt`` is optional. Relative file paths in a JSON file resolve against the JSON
file's folder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from gligen_rt.core.errors import RequestError
from gligen_rt.core.modality import MAX_OBJECTS, MAX_PERSONS, NUM_KEYPOINTS, Modality

SAMPLERS = ("plms", "ddim", "dpmpp_2m", "euler")
MAX_STEPS = 1000  # the training schedule has 1000 timesteps

Box = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True)
class GroundedObject:
    """One grounded object of a box model.

    box: normalised (x0, y0, x1, y1). phrase: what the box holds (required by text-box models).
    image: path to a reference image (text-image-box models take a phrase, an image, or both).
    """

    box: Box
    phrase: str | None = None
    image: str | None = None

    @property
    def has_phrase(self) -> bool:
        """True when a non-blank phrase is given (a blank phrase counts as none)."""
        return isinstance(self.phrase, str) and self.phrase.strip() != ""


@dataclass(frozen=True)
class Person:
    """One person of the keypoint model: 17 COCO keypoints, each normalised (x, y) or None (missing)."""

    keypoints: tuple[Point | None, ...]


@dataclass(frozen=True)
class GenerationRequest:
    """Everything one generation needs besides the model.

    condition: path to a condition map for spatial models (hed / canny / depth / normal image, or
    a sem label map). inpaint_image: the image to inpaint (inpainting models; the object boxes mark
    the regions to generate). style_image: text-image-box style trick (an extra image-only object).
    beta / alpha_type: scheduled sampling (diffusers' grounded fraction, or the original's
    [a, b, c]); both None means the model's default. height / width None means the model's size.
    feature_cache: K >= 2 reuses the deep UNet features on the plain (gate 0) steps, DeepCache-style:
    every K-th plain step runs the whole UNet, the K - 1 after it only its first and last levels
    (engines exported with --feature-cache). 0 or 1: every step runs the whole UNet (the default).
    feature_cache_grounded: the same on the grounded (gate > 0) steps: every K-th runs the whole
    grounded UNet, the K - 1 after it ``unet_shallow_grounded`` (its first and last levels, their
    fusers included). Off (0) by default, as it touches the grounding (its accuracy is measured in
    benchmarks/results/feature_cache/README.md).
    """

    prompt: str
    negative_prompt: str = ""
    objects: tuple[GroundedObject, ...] = ()
    persons: tuple[Person, ...] = ()
    condition: str | None = None
    inpaint_image: str | None = None
    style_image: str | None = None
    seed: int = 0
    steps: int = 50
    guidance: float = 7.5
    sampler: str = "plms"
    beta: float | None = None
    alpha_type: tuple[float, float, float] | None = None
    height: int | None = None
    width: int | None = None
    num_images: int = 1
    feature_cache: int = 0
    feature_cache_grounded: int = 0


# ------------------------------------------------------------------------------------------------
# Validation


def _fail(message: str) -> RequestError:
    """A RequestError whose message is guaranteed to be one line."""
    return RequestError(" ".join(message.splitlines()))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x: Any, what: str) -> float:
    if not _is_number(x):
        raise _fail(f"{what} must be a number, got {x!r}")
    if not math.isfinite(x):
        raise _fail(f"{what} is {x!r}: give a finite number (no NaN or Inf)")
    return float(x)


def _check_readable(path: Any, what: str) -> None:
    if not isinstance(path, str) or not path:
        raise _fail(f"{what} must be a file path, got {path!r}")
    if not os.path.exists(path):
        raise _fail(
            f"{what} {path!r} does not exist: check the path (relative paths in a JSON file resolve against its folder)"
        )
    if not os.path.isfile(path):
        raise _fail(f"{what} {path!r} is not a file: give the path of an image file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise _fail(f"{what} {path!r} cannot be read ({e.strerror or e}): fix its permissions") from None


def _check_box(box: Any, what: str) -> None:
    if not isinstance(box, (tuple, list)) or len(box) != 4:
        raise _fail(f"{what} must be 4 numbers (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (_finite(v, what) for v in box)
    if min(x0, y0, x1, y1) < 0.0 or max(x0, y0, x1, y1) > 1.0:
        raise _fail(
            f"{what} {tuple(box)!r} is outside [0, 1]: give coordinates normalised by the image width and height"
        )
    if x0 >= x1 or y0 >= y1:
        raise _fail(
            f"{what} {tuple(box)!r} is empty or flipped: need x0 < x1 and y0 < y1 (order x0, y0, x1, y1)"
        )


def _check_person(person: Any, what: str) -> None:
    if not isinstance(person, Person):
        raise _fail(f"{what} must be a Person, got {type(person).__name__}")
    kps = person.keypoints
    if not isinstance(kps, (tuple, list)) or len(kps) != NUM_KEYPOINTS:
        n = len(kps) if isinstance(kps, (tuple, list)) else kps
        raise _fail(
            f"{what} has {n} keypoints: give exactly {NUM_KEYPOINTS} in COCO order (null for a missing one)"
        )
    for j, kp in enumerate(kps):
        if kp is None:
            continue
        w = f"{what}.keypoints[{j}]"
        if not isinstance(kp, (tuple, list)) or len(kp) != 2:
            raise _fail(f"{w} must be [x, y] or null, got {kp!r}")
        x, y = _finite(kp[0], w), _finite(kp[1], w)
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise _fail(f"{w} {tuple(kp)!r} is outside [0, 1]: give coordinates normalised by the image size")


def _check_size(value: Any, name: str, multiple: int, max_size: int | None) -> None:
    if value is None:
        return
    if not _is_int(value):
        raise _fail(f"{name} must be an integer number of pixels, got {value!r}")
    if value < multiple or value % multiple:
        raise _fail(
            f"{name} {value} is not a positive multiple of {multiple}: use e.g. {max(multiple, round(value / multiple) * multiple)}"
        )
    if max_size is not None and value > max_size:
        raise _fail(
            f"{name} {value} is larger than {max_size}, the largest this model/engine accepts: lower it or rebuild the engines for a larger size"
        )


def _check_objects(request: GenerationRequest, modality: Modality, inpaint: bool) -> None:
    objects = request.objects
    if not modality.is_box:
        if objects:
            raise _fail(
                f"objects were given but the {modality.value} model takes no boxes: remove 'objects' or use a box model (CLI: --modality text-box)"
            )
        return
    limit_note = ""
    count = len(objects)
    if modality is Modality.TEXT_IMAGE_BOX and request.style_image is not None:
        count += 1
        limit_note = " (the style image counts as one)"
    if count > MAX_OBJECTS:
        raise _fail(
            f"{count} grounded objects{limit_note}: at most {MAX_OBJECTS} are supported, remove {count - MAX_OBJECTS}"
        )
    if inpaint and not objects:
        raise _fail("inpainting needs at least one object: its box marks the region to generate")
    for i, obj in enumerate(objects):
        what = f"objects[{i}]"
        if not isinstance(obj, GroundedObject):
            raise _fail(f"{what} must be a GroundedObject, got {type(obj).__name__}")
        _check_box(obj.box, f"{what}.box")
        if obj.phrase is not None and not isinstance(obj.phrase, str):
            raise _fail(f"{what}.phrase must be a string, got {obj.phrase!r}")
        has_phrase = obj.has_phrase
        if modality is Modality.TEXT_BOX:
            if not has_phrase:
                raise _fail(f"{what} has no phrase: the text-box model needs a phrase for every box")
            if obj.image is not None:
                raise _fail(
                    f"{what} has an image but the text-box model takes phrases only: remove 'image' or use a text-image-box model (CLI: --modality text-image-box)"
                )
        else:
            if not has_phrase and obj.image is None:
                raise _fail(f"{what} has neither a phrase nor an image: give one or both")
            if obj.image is not None:
                _check_readable(obj.image, f"{what}.image")


def _check_schedule(request: GenerationRequest) -> None:
    if request.beta is not None and request.alpha_type is not None:
        raise _fail("both beta and alpha_type are set: give one scheduled-sampling form, not both")
    if request.beta is not None:
        beta = _finite(request.beta, "beta")
        if not 0.0 <= beta <= 1.0:
            raise _fail(f"beta {beta!r} is outside [0, 1]: it is the fraction of steps that use grounding")
    if request.alpha_type is not None:
        at = request.alpha_type
        if not isinstance(at, (tuple, list)) or len(at) != 3:
            raise _fail(f"alpha_type must be 3 numbers [a, b, c], got {at!r}")
        vals = [_finite(v, "alpha_type") for v in at]
        if min(vals) < 0.0 or max(vals) > 1.0 or abs(sum(vals) - 1.0) > 1e-6:
            raise _fail(
                f"alpha_type {list(at)!r} must be 3 fractions in [0, 1] summing to 1 (grounded, decaying, plain steps)"
            )


def validate(
    request: GenerationRequest,
    modality: Modality | str,
    inpaint: bool,
    max_size: int | None = None,
    multiple: int = 8,
) -> None:
    """Check `request` against a model; raise RequestError (one line: problem and fix) on the first issue.

    modality / inpaint: the model's grounding kind and inpainting flag. max_size: the largest
    height/width the model or engine accepts (None: no limit). multiple: height and width must be
    multiples of it (the VAE factor, or a larger one an engine needs). Referenced files must exist
    and be readable; their contents are checked when loaded.
    """
    modality = Modality(modality)
    validate_fields(request, max_size=max_size, multiple=multiple)
    _check_objects(request, modality, inpaint)

    if request.persons and modality is not Modality.KEYPOINT:
        raise _fail(
            f"persons were given but the {modality.value} model takes no keypoints: remove 'persons' or use the keypoint model (CLI: --modality keypoint)"
        )
    if len(request.persons) > MAX_PERSONS:
        raise _fail(
            f"{len(request.persons)} persons: at most {MAX_PERSONS} are supported, remove {len(request.persons) - MAX_PERSONS}"
        )
    for i, person in enumerate(request.persons):
        _check_person(person, f"persons[{i}]")

    if modality.is_spatial:
        if request.condition is None:
            raise _fail(f"the {modality.value} model needs a condition map: set 'condition' to an image path")
        _check_readable(request.condition, "condition")
    elif request.condition is not None:
        raise _fail(
            f"a condition map was given but the {modality.value} model does not take one: remove 'condition' or use a spatial model (CLI: --modality hed|canny|depth|normal|sem)"
        )

    if inpaint:
        if request.inpaint_image is None:
            raise _fail(
                "the inpainting model needs an image to inpaint: set 'inpaint_image' to an image path"
            )
        _check_readable(request.inpaint_image, "inpaint_image")
    elif request.inpaint_image is not None:
        raise _fail(
            "inpaint_image was given but the model is not an inpainting model: remove it or use an inpainting model (CLI: --inpaint, or an inpainting checkpoint)"
        )

    if request.style_image is not None:
        if modality is not Modality.TEXT_IMAGE_BOX:
            raise _fail(
                f"style_image works only with the text-image-box model, not {modality.value}: remove it"
            )
        _check_readable(request.style_image, "style_image")


def validate_fields(request: GenerationRequest, max_size: int | None = None, multiple: int = 8) -> None:
    """The checks that need no model (types, numbers, boxes and keypoints in range), done by `validate`
    too: a command line runs them before it loads anything."""
    if not isinstance(request, GenerationRequest):
        raise _fail(f"expected a GenerationRequest, got {type(request).__name__}")
    if not isinstance(request.prompt, str):
        raise _fail(f"prompt must be a string, got {request.prompt!r}")
    if not isinstance(request.negative_prompt, str):
        raise _fail(f"negative_prompt must be a string, got {request.negative_prompt!r}")
    for i, obj in enumerate(request.objects):
        if isinstance(obj, GroundedObject):
            _check_box(obj.box, f"objects[{i}].box")
    if not _is_int(request.seed) or request.seed < 0:
        raise _fail(f"seed must be a non-negative integer, got {request.seed!r}")
    if not _is_int(request.steps) or not 1 <= request.steps <= MAX_STEPS:
        raise _fail(f"steps must be an integer in [1, {MAX_STEPS}], got {request.steps!r}")
    guidance = _finite(request.guidance, "guidance")
    if guidance < 0.0:
        raise _fail(f"guidance {guidance!r} is negative: use 0 or more (1 = no guidance, 7.5 typical)")
    if request.sampler not in SAMPLERS:
        raise _fail(f"unknown sampler {request.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    _check_schedule(request)
    _check_size(request.height, "height", multiple, max_size)
    _check_size(request.width, "width", multiple, max_size)
    if not _is_int(request.num_images) or request.num_images < 1:
        raise _fail(f"num_images must be an integer >= 1, got {request.num_images!r}")
    for key, steps in (("feature_cache", "plain"), ("feature_cache_grounded", "grounded")):
        value = getattr(request, key)
        if not _is_int(value) or not 0 <= value <= MAX_STEPS:
            raise _fail(
                f"{key} must be an integer in [0, {MAX_STEPS}] (0: off; K: the whole UNet every "
                f"K-th {steps} step), got {value!r}"
            )


# ------------------------------------------------------------------------------------------------
# JSON


_TOP_KEYS = tuple(f.name for f in fields(GenerationRequest))
_OBJECT_KEYS = ("phrase", "box", "image")
_PERSON_KEYS = ("keypoints",)


def _check_keys(d: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in d:
        if key not in allowed:
            raise _fail(f"unknown key {key!r} in {where}: allowed keys are {', '.join(allowed)}")


def _as_dict(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _as_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _fail(f"{where} must be a JSON list, got {value!r}")
    return list(value)


def _as_str(value: Any, where: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _fail(f"{where} must be a string, got {value!r}")
    return value


def _as_num(value: Any, where: str) -> float:
    if not _is_number(value):
        raise _fail(f"{where} must be a number, got {value!r}")
    return float(value)


def _as_int(value: Any, where: str) -> int:
    if not _is_int(value):
        raise _fail(f"{where} must be an integer, got {value!r}")
    return int(value)


def _as_floats(value: Any, n: int, where: str) -> tuple[float, ...]:
    items = _as_list(value, where)
    if len(items) != n:
        raise _fail(f"{where} must have {n} numbers, got {len(items)}")
    return tuple(_as_num(v, where) for v in items)


def _resolve(path: str | None, base_dir: str | None) -> str | None:
    if path is None:
        return None
    path = os.path.expanduser(path)
    if base_dir is not None and not os.path.isabs(path):
        path = os.path.normpath(os.path.join(base_dir, path))
    return path


def _parse_object(value: Any, i: int, base_dir: str | None) -> GroundedObject:
    where = f"objects[{i}]"
    d = _as_dict(value, where)
    _check_keys(d, _OBJECT_KEYS, where)
    if "box" not in d:
        raise _fail(f"{where} has no 'box': give [x0, y0, x1, y1] normalised to [0, 1]")
    box = _as_floats(d["box"], 4, f"{where}.box")
    phrase = _as_str(d.get("phrase"), f"{where}.phrase")
    image = _resolve(_as_str(d.get("image"), f"{where}.image"), base_dir)
    return GroundedObject(box=box, phrase=phrase, image=image)  # type: ignore[arg-type]


def _parse_person(value: Any, i: int) -> Person:
    where = f"persons[{i}]"
    d = _as_dict(value, where)
    _check_keys(d, _PERSON_KEYS, where)
    if "keypoints" not in d:
        raise _fail(f"{where} has no 'keypoints': give {NUM_KEYPOINTS} [x, y] pairs (null for missing)")
    kps: list[Point | None] = []
    for j, kp in enumerate(_as_list(d["keypoints"], f"{where}.keypoints")):
        kps.append(None if kp is None else _as_floats(kp, 2, f"{where}.keypoints[{j}]"))  # type: ignore[arg-type]
    return Person(keypoints=tuple(kps))


def _parse(d: Mapping[str, Any], base_dir: str | None) -> GenerationRequest:
    _check_keys(d, _TOP_KEYS, "the request")
    if "prompt" not in d:
        raise _fail('the request has no \'prompt\': add "prompt": "..." (it may be empty)')
    kw: dict[str, Any] = {"prompt": _as_str(d["prompt"], "prompt", optional=False)}
    if "negative_prompt" in d:
        kw["negative_prompt"] = _as_str(d["negative_prompt"], "negative_prompt", optional=False)
    if d.get("objects") is not None:
        kw["objects"] = tuple(
            _parse_object(o, i, base_dir) for i, o in enumerate(_as_list(d["objects"], "objects"))
        )
    if d.get("persons") is not None:
        kw["persons"] = tuple(_parse_person(p, i) for i, p in enumerate(_as_list(d["persons"], "persons")))
    for key in ("condition", "inpaint_image", "style_image"):
        if key in d:
            kw[key] = _resolve(_as_str(d[key], key), base_dir)
    for key in ("seed", "steps", "num_images", "feature_cache", "feature_cache_grounded"):
        if key in d:
            kw[key] = _as_int(d[key], key)
    for key in ("height", "width"):
        if d.get(key) is not None:
            kw[key] = _as_int(d[key], key)
    if "guidance" in d:
        kw["guidance"] = _as_num(d["guidance"], "guidance")
    if "sampler" in d:
        kw["sampler"] = _as_str(d["sampler"], "sampler", optional=False)
    if d.get("beta") is not None:
        kw["beta"] = _as_num(d["beta"], "beta")
    if d.get("alpha_type") is not None:
        kw["alpha_type"] = _as_floats(d["alpha_type"], 3, "alpha_type")
    return GenerationRequest(**kw)


def request_from_json(
    path_or_dict: str | os.PathLike[str] | Mapping[str, Any], base_dir: str | None = None
) -> GenerationRequest:
    """Parse a request from a JSON file path or an already-loaded dict (format in the module docstring).

    Relative file paths resolve against the JSON file's folder, or against `base_dir` for a dict
    (kept as given when `base_dir` is None). Unknown keys, wrong types and malformed JSON raise
    RequestError with one line. The result is not validated against a model: call `validate`.
    """
    if isinstance(path_or_dict, Mapping):
        return _parse(path_or_dict, base_dir)
    path = os.fspath(path_or_dict)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise _fail(f"request file {path!r} does not exist: check the path") from None
    except json.JSONDecodeError as e:
        raise _fail(
            f"request file {path!r} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except UnicodeDecodeError:
        raise _fail(f"request file {path!r} is not UTF-8 text: save it as UTF-8 JSON") from None
    except OSError as e:
        raise _fail(
            f"request file {path!r} cannot be read ({e.strerror or e}): check the path and its permissions"
        ) from None
    return _parse(_as_dict(data, f"request file {path!r}"), os.path.dirname(os.path.abspath(path)))


def request_to_json(request: GenerationRequest) -> dict[str, Any]:
    """The JSON-ready dict of `request` (None-valued optional fields left out); inverse of request_from_json."""
    out: dict[str, Any] = {"prompt": request.prompt, "negative_prompt": request.negative_prompt}
    if request.objects:
        objs = []
        for o in request.objects:
            d: dict[str, Any] = {"box": list(o.box)}
            if o.phrase is not None:
                d["phrase"] = o.phrase
            if o.image is not None:
                d["image"] = o.image
            objs.append(d)
        out["objects"] = objs
    if request.persons:
        out["persons"] = [
            {"keypoints": [None if kp is None else list(kp) for kp in p.keypoints]} for p in request.persons
        ]
    for key in ("condition", "inpaint_image", "style_image"):
        if getattr(request, key) is not None:
            out[key] = getattr(request, key)
    out.update(seed=request.seed, steps=request.steps, guidance=request.guidance, sampler=request.sampler)
    if request.beta is not None:
        out["beta"] = request.beta
    if request.alpha_type is not None:
        out["alpha_type"] = list(request.alpha_type)
    for key in ("height", "width"):
        if getattr(request, key) is not None:
            out[key] = getattr(request, key)
    out["num_images"] = request.num_images
    for key in ("feature_cache", "feature_cache_grounded"):
        if getattr(request, key):
            out[key] = getattr(request, key)
    return out
