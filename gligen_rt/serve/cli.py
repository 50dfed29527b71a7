"""`gligen-rt serve` (the HTTP server and page) and `gligen-rt triton-repo` (a Triton model repository)."""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path
from typing import Any

from gligen_rt.core.backends import BACKENDS as ALL_BACKENDS
from gligen_rt.core.errors import GligenError, RequestError

log = logging.getLogger("gligen_rt")

# The server runs engine folders: every engine backend (the torch reference is for parity, not serving).
BACKENDS = tuple(b for b in ALL_BACKENDS if b != "torch")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); a one-line error when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise GligenError(
            f"cannot listen on {host}:{port} ({e.strerror or e}): pick another --port or --host"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def limits_from_args(args: argparse.Namespace) -> Any:
    from .app import ServerLimits
    from .jobs import default_concurrency

    if args.concurrency is not None and args.concurrency < 1:
        raise RequestError(f"--concurrency {args.concurrency} must be 1 or more")
    if args.max_queue < 0:
        raise RequestError(f"--max-queue {args.max_queue} must be 0 or more")
    if not args.timeout > 0:
        raise RequestError(f"--timeout {args.timeout} must be a positive number of seconds")
    if not args.max_body_mb > 0:
        raise RequestError(f"--max-body-mb {args.max_body_mb} must be positive")
    return ServerLimits(
        concurrency=args.concurrency or default_concurrency(args.backend),
        max_queue=args.max_queue,
        timeout_s=float(args.timeout),
        max_body_bytes=int(args.max_body_mb * 2**20),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise GligenError(f"serving needs {e.name}: pip install 'gligen-rt[serve]'") from None
    from gligen_rt.runtime.cli import model_guidance, open_pipeline

    limits = limits_from_args(args)
    sock = bind(args.host, args.port)  # before loading engines: a busy port fails in a second
    try:
        with open_pipeline(args) as pipe:
            app = create_app(pipe, limits, backend=args.backend, guidance=model_guidance(args))
            host, port = sock.getsockname()[:2]
            log.info(
                "serving the %s %s model on %s at http://%s:%d/ (concurrency %d, queue %d)",
                pipe.config.name,
                pipe.modality.value,
                args.backend,
                host,
                port,
                limits.concurrency,
                limits.max_queue,
            )
            config = uvicorn.Config(
                app, log_level="info" if args.verbose else "warning", access_log=args.verbose
            )
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def register(subparsers: Any) -> None:
    """Add `gligen-rt serve` and `gligen-rt triton-repo` to the CLI's subparsers."""
    from .triton import register as register_triton

    register_triton(subparsers)
    p = subparsers.add_parser("serve", help="HTTP server with a box-drawing page over an engine folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--engines", type=Path, default=None, help="engine folder (from `gligen-rt export`)")
    src.add_argument(
        "--model",
        default="tiny",
        choices=["tiny", "tiny-random"],
        help="the embedded model when no --engines is given (default: %(default)s)",
    )
    p.add_argument(
        "--modality",
        default=None,
        choices=["text-box", "text-image-box", "keypoint", "hed", "canny", "depth", "normal", "sem"],
        help="modality of the embedded model (with --model)",
    )
    p.add_argument("--inpaint", action="store_true", help="the embedded inpainting model (with --model)")
    p.add_argument("--backend", default="ort-cpu", choices=BACKENDS, help="default: %(default)s")
    p.add_argument("--single-unet", action="store_true", help="run plain steps on the grounded UNet")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free one; default: %(default)s)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="generations at once (default: 1 on CPU backends, 2 on GPU backends)",
    )
    p.add_argument("--max-queue", type=int, default=32, help="requests that may wait (default: %(default)s)")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds per request, queue included (default: %(default)s)",
    )
    p.add_argument(
        "--max-body-mb", type=float, default=32.0, help="request body limit in MiB (default: %(default)s)"
    )
    p.set_defaults(func=cmd_serve, checkpoint=None)
