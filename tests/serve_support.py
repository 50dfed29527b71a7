"""Shared helpers of the server tests (no tests here): a real uvicorn server on a loopback port in a
thread, and a pipeline wrapper that can hold its calls (to fill the queue, time out, or cancel)."""

from __future__ import annotations

import base64
import io
import threading
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'gligen-rt[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed")

from gligen_rt.serve.cli import bind  # noqa: E402


class LiveServer:
    """`app` served by uvicorn on 127.0.0.1 (a free port) in a daemon thread; `url` is its root."""

    def __init__(self, app: Any) -> None:
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HeldPipeline:
    """Delegates to a GligenPipeline; while `hold` is clear, each call waits before its first step.

    steps_run counts the denoising steps that actually ran (to see a cancelled call stop early).
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.steps_run = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, request: Any, on_step: Any = None) -> Any:
        self.entered.set()

        def step(i: int, n: int) -> None:
            self.steps_run += 1
            self.hold.wait()
            if on_step is not None:
                on_step(i, n)

        return self.pipe(request, on_step=step)


def png_b64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(data: bytes | str) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im.convert("RGB"))
