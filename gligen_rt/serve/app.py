"""The HTTP server: a FastAPI app over one GligenPipeline.

    POST /v1/generate           request JSON (or multipart) -> JSON {images: [base64 PNG], seed,
                                timings, ...}, or the PNG itself with ?format=png / Accept: image/png
    POST /v1/generate/stream    the same body -> server-sent events: queued, progress, result | error
    GET  /v1/info               model modality, inpainting, sizes, samplers, limits
    GET  /healthz /readyz       alive / engines loaded and accepting work
    GET  /metrics               Prometheus text
    GET  /                      the box-drawing page (static/)

Refusals are JSON {"error": one line, "kind": ...}: 400 unparsable JSON, 413 body too large, 415
content type, 422 validation (the CLI's message), 503 queue full or not ready, 504 timeout. A
request whose client goes away is cancelled (at the next denoising step); nothing is answered
until the whole image is made. An error in one request never stops the server.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gligen_rt.core.errors import GligenError, NumericalError, RequestError
from gligen_rt.core.imageio import COCO_SKELETON
from gligen_rt.core.modality import KEYPOINT_NAMES, MAX_OBJECTS, MAX_PERSONS, NUM_KEYPOINTS
from gligen_rt.core.request import MAX_STEPS, SAMPLERS, GenerationRequest, request_to_json

from .jobs import Cancelled, Job, JobRunner, QueueFull
from .metrics import CONTENT_TYPE, Metrics
from .payload import HttpError, Workdir, media_type, parse_form, parse_json

log = logging.getLogger("gligen_rt.serve")

ROUTES = ("/", "/v1/generate", "/v1/generate/stream", "/v1/info", "/healthz", "/readyz", "/metrics")
POLL_S = 0.1  # how often a waiting request checks for a gone client
STATIC = resources.files("gligen_rt.serve") / "static"


@dataclass(frozen=True)
class ServerLimits:
    """concurrency: pipeline calls at once. max_queue: jobs that may wait beyond those. timeout_s:
    per request, queue wait included. max_body_bytes: request body (JSON or multipart)."""

    concurrency: int = 1
    max_queue: int = 32
    timeout_s: float = 600.0
    max_body_bytes: int = 32 * 2**20


class TimedOut(GligenError):
    """The request took longer than the server's --timeout (HTTP 504)."""


class ClientGone(Exception):
    """The client closed the connection before its image was made."""


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, kind, one-line message) of an error raised while answering a request."""
    if isinstance(exc, HttpError):
        return exc.status, exc.kind, str(exc)
    if isinstance(exc, QueueFull):
        return 503, "queue_full", str(exc)
    if isinstance(exc, TimedOut):
        return 504, "timeout", str(exc)
    if isinstance(exc, RequestError):
        return 422, "validation", str(exc)
    if isinstance(exc, NumericalError):
        return 500, "numerical", str(exc)
    if isinstance(exc, GligenError):
        return 500, "engine", str(exc)
    if isinstance(exc, (Cancelled, ClientGone)):
        return 499, "cancelled", "the request was cancelled before its image was made"
    return 500, "internal", f"internal error ({type(exc).__name__}); the server logged it and keeps serving"


def error_response(status: int, kind: str, message: str) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"error": message, "kind": kind}, status_code=status, headers=headers)


class _BodyLimitAndCount:
    """Pure ASGI middleware: refuses bodies over the limit (HttpError 413 from `receive`, answered
    by the app's handler) and counts answers per route and status code. Not BaseHTTPMiddleware:
    that one hides client disconnects from the endpoint."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path if path in ROUTES else ("/static" if path.startswith("/static/") else "other")
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _too_large(self.limit)
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            status, kind, msg = classify(_too_large(self.limit))
            self.metrics.errors.labels(kind).inc()
            return await error_response(status, kind, msg)(scope, receive, counting_send)
        await self.app(scope, limited_receive, counting_send)


def _too_large(limit: int) -> HttpError:
    return HttpError(
        413,
        f"the request body is larger than {limit} bytes: send smaller images (or start the server with a larger --max-body-mb)",
        "body_too_large",
    )


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def create_app(
    pipeline: Any,
    limits: ServerLimits | None = None,
    backend: str | None = None,
    guidance: float | None = None,
) -> FastAPI:
    """The app over `pipeline` (a loaded GligenPipeline, owned by the caller: closed by it).

    backend: the backend's name for /v1/info (default: the pipeline's backend's name).
    guidance: the model's own scale for requests that name none (default: the request's default).
    """
    defaults = {} if guidance is None else {"guidance": guidance}
    limits = limits or ServerLimits()
    runner = JobRunner(pipeline, limits.concurrency, limits.max_queue)
    metrics = Metrics(lambda: runner.waiting, lambda: runner.running)
    upload_root = Path(tempfile.gettempdir())
    state = {"ready": False}

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await asyncio.to_thread(runner.close)

    app = FastAPI(title="gligen-rt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runner = runner
    app.state.metrics = metrics
    app.add_middleware(_BodyLimitAndCount, limit=limits.max_body_bytes, metrics=metrics)

    async def _error(request: Request, exc: Exception) -> JSONResponse:
        status, kind, message = classify(exc)
        if kind in ("internal", "engine", "numerical"):
            log.error("%s %s failed: %s", request.method, request.url.path, message, exc_info=exc)
        metrics.errors.labels(kind).inc()
        return error_response(status, kind, message)

    # GligenErrors (bad requests, full queue, timeouts, engine failures) are answered here; any
    # other exception is a bug: answered with a 500 line too, and logged with its traceback.
    app.add_exception_handler(GligenError, _error)
    app.add_exception_handler(Cancelled, _error)
    app.add_exception_handler(Exception, _error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http")
        metrics.errors.labels(kind).inc()
        hint = {
            404: ": see / for the page and /v1/info for the API",
            405: f": {request.method} is not allowed here",
        }
        return error_response(exc.status_code, kind, f"{exc.detail}{hint.get(exc.status_code, '')}")

    # -- request preparation ---------------------------------------------------------------------

    async def prepare(request: Request) -> tuple[GenerationRequest, Workdir]:
        """Body -> validated GenerationRequest and its upload folder (removed here on error)."""
        ctype = media_type(request.headers.get("content-type"))
        work = Workdir(upload_root / f"gligen-serve-{uuid.uuid4().hex}")
        try:
            if ctype == "application/json":
                req = parse_json(await request.body(), work, defaults=defaults)
            elif ctype == "multipart/form-data":
                try:
                    form = await request.form(max_files=MAX_OBJECTS + 4, max_fields=8)
                except MultiPartException as e:
                    raise HttpError(
                        400, f"the multipart body cannot be parsed: {e.message}", "bad_form"
                    ) from None
                fields: dict[str, Any] = {}
                for name, value in form.multi_items():
                    fields[name] = await value.read() if hasattr(value, "read") else value
                await form.close()
                req = parse_form(fields, work, defaults)
            else:
                raise HttpError(
                    415,
                    f"content type {ctype or 'none'!r} is not accepted: send application/json (or multipart/form-data with a 'request' field)",
                    "unsupported_media_type",
                )
            pipeline.check_request(req)
            return req, work
        except BaseException:
            shutil.rmtree(work.path, ignore_errors=True)
            raise

    def submit(req: GenerationRequest, work: Workdir, on_progress: Any = None) -> Job:
        if not state["ready"]:
            shutil.rmtree(work.path, ignore_errors=True)
            raise QueueFull("the server is not ready (engines loading or shutting down): retry shortly")
        job = Job(req, on_progress=on_progress, on_done=lambda: shutil.rmtree(work.path, ignore_errors=True))
        try:
            return runner.submit(job)
        except BaseException:
            shutil.rmtree(work.path, ignore_errors=True)
            raise

    def outcome(job: Job) -> asyncio.Future[Any]:
        assert job.future is not None
        fut = asyncio.wrap_future(job.future)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "never retrieved"
        return fut

    async def wait_a_while(job: Job, fut: asyncio.Future[Any]) -> None:
        """Wait up to POLL_S for `fut` (the job's outcome), so that the caller can look at its
        client or pass on progress in between; past the request's deadline (queue wait included)
        cancel the job and raise TimedOut (504)."""
        remaining = job.enqueued + limits.timeout_s - time.perf_counter()
        if remaining <= 0:
            runner.cancel(job)
            raise TimedOut(
                f"the request took longer than {limits.timeout_s:g} s (queue wait included): use fewer steps or a smaller size, or retry later"
            )
        await asyncio.wait({fut}, timeout=min(POLL_S, remaining))

    def result_json(job: Job, result: Any, t0: float) -> dict[str, Any]:
        req = job.request
        images = [base64.b64encode(_png(im)).decode("ascii") for im in result.images]
        metrics.observe_result(job.queue_seconds, result.timings, len(images))
        echo = request_to_json(req)
        for key in ("condition", "inpaint_image", "style_image"):  # server-side temp paths: not for clients
            echo.pop(key, None)
        for o in echo.get("objects", []):
            o.pop("image", None)
        return {
            "id": job.id,
            "seed": req.seed,
            "height": int(result.images.shape[1]),
            "width": int(result.images.shape[2]),
            "images": images,
            "timings": {**result.timings, "queue": job.queue_seconds, "request": time.perf_counter() - t0},
            "request": echo,
        }

    # -- endpoints -------------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if state["ready"]:
            return JSONResponse({"ready": True, "engines": list(pipeline.engines)})
        return error_response(
            503, "not_ready", "the engines are not loaded yet, or the server is shutting down"
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        cfg = pipeline.config
        return {
            "model": cfg.name,
            "modality": cfg.modality.value,
            "inpaint": bool(cfg.inpaint),
            "backend": backend or getattr(pipeline.backend, "name", None),
            "engines": list(pipeline.engines),
            "default_size": cfg.default_size,
            "default_guidance": defaults.get("guidance", GenerationRequest.guidance),
            "max_size": pipeline.max_size(),
            "size_multiple": 64,
            "samplers": list(SAMPLERS),
            "max_steps": MAX_STEPS,
            "max_objects": MAX_OBJECTS,
            "max_persons": MAX_PERSONS,
            "num_keypoints": NUM_KEYPOINTS,
            "keypoint_names": list(KEYPOINT_NAMES),  # COCO order, as `persons` takes them
            "skeleton": [list(limb) for limb in COCO_SKELETON],  # limbs as keypoint index pairs
            "limits": asdict(limits),
        }

    @app.post("/v1/generate")
    async def generate(request: Request) -> Response:
        t0 = time.perf_counter()
        fmt = request.query_params.get("format")
        if fmt is None:
            fmt = "png" if "image/png" in request.headers.get("accept", "") else "json"
        if fmt not in ("json", "png"):
            raise HttpError(422, f"format {fmt!r} is unknown: use format=json or format=png")
        req, work = await prepare(request)
        if fmt == "png" and req.num_images != 1:
            shutil.rmtree(work.path, ignore_errors=True)
            raise HttpError(
                422, f"format=png returns one image but num_images is {req.num_images}: use format=json"
            )
        job = submit(req, work)
        fut = outcome(job)
        while not fut.done():
            await wait_a_while(job, fut)
            if not fut.done() and await request.is_disconnected():
                runner.cancel(job)
                metrics.errors.labels("cancelled").inc()
                log.info("request %s cancelled: the client went away", job.id)
                return Response(status_code=499)
        result = fut.result()  # the pipeline's own errors go to the handlers above
        metrics.latency.labels("/v1/generate").observe(time.perf_counter() - t0)
        if fmt == "png":
            metrics.observe_result(job.queue_seconds, result.timings, 1)
            return Response(
                _png(result.images[0]),
                media_type="image/png",
                headers={"X-Request-Id": job.id, "X-Seed": str(req.seed)},
            )
        return JSONResponse(result_json(job, result, t0))

    @app.post("/v1/generate/stream")
    async def generate_stream(request: Request) -> Response:
        t0 = time.perf_counter()
        req, work = await prepare(request)
        loop = asyncio.get_running_loop()
        progress: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        job = submit(req, work, lambda i, n: loop.call_soon_threadsafe(progress.put_nowait, (i, n)))
        fut = outcome(job)

        def event(name: str, data: dict[str, Any]) -> bytes:
            # The SSE wire format is two lines per event; json.dumps keeps data on one line.
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        async def events() -> AsyncIterator[bytes]:
            try:
                yield event("queued", {"id": job.id, "waiting": runner.waiting, "steps": req.steps})
                while not fut.done():
                    await wait_a_while(job, fut)
                    while not progress.empty():
                        i, n = progress.get_nowait()
                        yield event("progress", {"id": job.id, "step": i + 1, "steps": n})
                result = fut.result()
                metrics.latency.labels("/v1/generate/stream").observe(time.perf_counter() - t0)
                yield event("result", result_json(job, result, t0))
            except (asyncio.CancelledError, GeneratorExit):  # the client went away
                runner.cancel(job)
                metrics.errors.labels("cancelled").inc()
                raise
            except Exception as e:
                status, kind, message = classify(e)
                if kind in ("internal", "engine", "numerical"):
                    log.error("stream %s failed: %s", job.id, message, exc_info=e)
                metrics.errors.labels(kind).inc()
                yield event("error", {"id": job.id, "status": status, "kind": kind, "error": message})

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Request-Id": job.id},
        )

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
