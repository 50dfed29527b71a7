"""Serving: an HTTP server with a box-drawing page (`gligen-rt serve`), and a Triton Inference
Server model repository (`gligen-rt triton-repo`).

`create_app(pipeline, ServerLimits(...))` is the ASGI app (app.py); payload.py turns HTTP bodies into
GenerationRequests; jobs.py bounds the queue and the pipeline calls at once; metrics.py is the
Prometheus side; static/ is the page; cli.py registers the subcommands.
"""

from typing import Any

__all__ = ["ServerLimits", "create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the CLI registers `serve` from serve/cli.py in every install, and a
    # runtime-only install (`gligen-rt[ort]`) has no fastapi.
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
