"""User-facing errors: each carries one line that says what is wrong and how to fix it.

The CLI prints `error: <message>` and exits non-zero for any GligenError; everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class GligenError(Exception):
    """Base class: the message is one line, stating the problem and the fix."""

    exit_code = 2


class RequestError(GligenError):
    """A generation request is invalid (boxes, counts, NaN, missing inputs)."""


class CheckpointError(GligenError):
    """A checkpoint file or folder cannot be loaded (layout, keys, shapes, unreadable)."""


class EngineError(GligenError):
    """An engine folder or built engine is missing, corrupt, or does not match its spec/library/GPU."""


class BackendUnavailable(GligenError):
    """A backend library (tensorrt, onnxruntime-gpu, openvino) or a GPU is not present."""


class NumericalError(GligenError):
    """NaN or Inf appeared in latents or outputs."""


class DataError(GligenError):
    """A training data folder is missing, unreadable, or holds an invalid image, box or phrase."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (at most `limit` characters), or its type name: how a
    library's multi-line error is quoted inside our one-line messages."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__
