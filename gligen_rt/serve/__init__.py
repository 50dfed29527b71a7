"""Serving: an HTTP server with a box-drawing page (`gligen-rt serve`), and a Triton Inference
Server model repository (`gligen-rt triton-repo`).

`create_app(pipeline, ServerLimits(...))` is the ASGI app (app.py); payload.py turns HTTP bodies into
GenerationRequests; jobs.py bounds the queue and the pipeline calls at once; metrics.py is the
Prometheus side; static/ is the page; cli.py registers the subcommands.
"""

from .app import ServerLimits, create_app

__all__ = ["ServerLimits", "create_app"]
