"""Reading torch.save files without ever running code from them.

`load_torch_file(path)` first tries ``torch.load(weights_only=True)``. Original GLIGEN checkpoints
also carry a pickled omegaconf ``config_dict`` (and SD training checkpoints carry Lightning objects),
which the weights-only loader refuses. Only for that case the file is read again with this module as
``torch.load``'s ``pickle_module``: a restricted Unpickler whose ``find_class`` returns the real object
only for an allowlist (torch tensor / parameter rebuild functions, dtypes, ``torch.Size``,
``collections.OrderedDict`` and a few harmless builtins). Every other global becomes an inert
`Placeholder` subclass that records the arguments, state and items the pickle hands it and never
imports a module or calls anything, so ``os.system`` in a ``__reduce__`` stays a name.

Storages never reach ``find_class``: torch's own Unpickler wrapper resolves ``*Storage`` names and
``persistent_load`` reads tensor data from the archive.
"""

from __future__ import annotations

import builtins
import codecs
import collections
import io
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

from gligen_rt.core.errors import CheckpointError

_TORCH_REBUILD = frozenset(
    {
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
    }
)
_SAFE_BUILTINS = frozenset(
    {
        "set",
        "frozenset",
        "slice",
        "complex",
        "int",
        "float",
        "bool",
        "str",
        "bytes",
        "bytearray",
        "tuple",
        "list",
        "dict",
    }
)
_DTYPE_NAMES = frozenset(name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype))


def _allowed(module: str, name: str) -> Any | None:
    """The real object for an allowlisted global, else None."""
    if module == "torch._utils" and name in _TORCH_REBUILD:
        return getattr(torch._utils, name)
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return torch._tensor._rebuild_from_type_v2
    if module in ("torch.nn.parameter", "torch.nn") and name == "Parameter":
        return torch.nn.Parameter
    if module in ("torch._tensor", "torch") and name == "Tensor":
        return torch.Tensor
    if module == "torch" and name in ("Size", "device"):
        return getattr(torch, name)
    if module == "torch" and name in _DTYPE_NAMES:
        return getattr(torch, name)
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
        return getattr(builtins, name)
    if module == "_codecs" and name == "encode":  # protocol-2 pickles spell bytes this way
        return codecs.encode
    return None


class Placeholder:
    """Stands for a global the loader does not trust. Records what the pickle gives it; runs nothing.

    ``module`` and ``qualname`` (class attributes) name the global; ``args`` / ``kwargs`` are the
    constructor or reduce arguments, ``state`` what BUILD passed, ``items`` / ``mapping`` what
    APPEND(S) / SETITEM(S) added.
    """

    module: str = ""
    qualname: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = object.__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.items = []
        obj.mapping = {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.mapping[key] = value

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<untrusted {self.module}.{self.qualname}>"


_PLACEHOLDERS: dict[tuple[str, str], type[Placeholder]] = {}


def placeholder(module: str, name: str) -> type[Placeholder]:
    """The (cached) inert class standing for ``module.name``."""
    key = (module, name)
    if key not in _PLACEHOLDERS:
        safe = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "Global"
        _PLACEHOLDERS[key] = type(safe, (Placeholder,), {"module": module, "qualname": name})
    return _PLACEHOLDERS[key]


class Unpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only allowlisted globals (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed(module, name)
        return obj if obj is not None else placeholder(module, name)


def load(file: BinaryIO, **kwargs: Any) -> Any:
    """``pickle.load`` with the restricted Unpickler (torch calls it for legacy-format headers)."""
    return Unpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    return Unpickler(io.BytesIO(data), **kwargs).load()


def load_torch_file(path: str | os.PathLike[str], *, untrusted_globals: bool = True) -> Any:
    """A torch.save file as CPU tensors and plain containers.

    Read with ``weights_only=True``; if that refuses only non-tensor globals and ``untrusted_globals``
    is set, read again with the restricted Unpickler (those globals become placeholders). Zip-format
    files are memory-mapped. Raises CheckpointError (one line, naming the file) when the file is
    missing, truncated, not written by torch.save, or refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    zipped = zipfile.is_zipfile(path)
    if not zipped and not _looks_like_legacy_pickle(path):
        raise CheckpointError(f"{path}: not a torch checkpoint (truncated, or not written by torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one CheckpointError line
        if not (untrusted_globals and _is_weights_only_refusal(exc)):
            raise CheckpointError(f"{path}: cannot read the checkpoint ({_short(exc)})") from None
    try:  # only non-tensor globals were refused: read again, with untrusted globals as placeholders
        return torch.load(
            path, map_location="cpu", weights_only=False, mmap=zipped, pickle_module=sys.modules[__name__]
        )
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read the checkpoint ({_short(exc)})") from None


def _looks_like_legacy_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _is_weights_only_refusal(exc: BaseException) -> bool:
    return isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
