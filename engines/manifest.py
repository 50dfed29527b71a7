"""Artifacts describe themselves: one JSON manifest beside every exported graph and built engine.

Layout (ARCHITECTURE.md, "Engine folder"):

    DIR/manifest.json           FolderManifest: model config, precision, engines, envelope, ...
    DIR/<engine>.onnx[.data]    exported graph
    DIR/<engine>.json           EngineManifest, backend "onnx"
    DIR/<backend>/<engine>.*    built plan / optimized model
    DIR/<backend>/<engine>.json EngineManifest of the built artifact

`verify` checks a manifest against what the runtime expects (spec fingerprint, library versions,
GPU compute capability, the artifact's bytes) and raises EngineError with one line naming the
mismatch and the command that fixes it. All writes are atomic (temp file + os.replace), so an
interrupted export or build never leaves a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gligen_rt.core.errors import EngineError, first_line

FORMAT_VERSION = 1
FOLDER_MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16")
# fp32: FP32 graph built as is. fp16-strongly-typed: the ONNX graph holds FP16 with Cast nodes at the
# float32 boundary (TensorRT strongly typed networks, TensorRT-RTX, TensorRT 11).
# fp32-fp16-flag: FP32 graph, weakly typed network + BuilderFlag.FP16 (TensorRT 10 only).
FLAVORS = ("fp32", "fp16-strongly-typed", "fp32-fp16-flag")
ONNX_BACKEND = "onnx"  # the `backend` of an exported graph's manifest

_LIBRARY_NAMES = {
    "tensorrt": "TensorRT",
    "tensorrt_rtx": "TensorRT-RTX",
    "onnxruntime": "ONNX Runtime",
    "openvino": "OpenVINO",
    "onnx": "onnx",
}


def now_iso() -> str:
    """UTC timestamp, ISO 8601, seconds."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class EngineManifest:
    """The manifest beside one artifact (an exported .onnx or a built engine).

    `artifact` is the artifact's file name in the same folder; `artifact_sha256`/`artifact_size`
    describe its bytes (for ONNX: `onnx_sha256`, i.e. the .onnx and its .onnx.data together).
    `builder` holds the builder settings (profile shapes, workspace, flags, provider options),
    `library_versions` e.g. {"tensorrt": "10.8.0.43"}, `gpu_compute_capability` e.g. "8.9" or
    None where the artifact is not tied to one GPU, `parity` e.g. {"max_abs": 1e-5, "psnr": 61.2}.
    """

    engine: str
    backend: str
    artifact: str
    artifact_sha256: str
    artifact_size: int
    spec_fingerprint: str
    spec: dict[str, Any]
    onnx_sha256: str
    model_config: dict[str, Any]
    precision: str
    flavor: str
    checkpoint_sha256: str | None = None
    builder: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=dict)
    gpu_compute_capability: str | None = None
    parity: dict[str, float] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor {self.flavor!r} is not one of {FLAVORS}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineManifest:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class FolderManifest:
    """DIR/manifest.json, written by the exporter; `build` and the runtime read it.

    `engines` lists the engine names present (each has DIR/<engine>.onnx and DIR/<engine>.json),
    `envelope` is ShapeEnvelope.to_dict() of the request envelope the specs were made for,
    `tokenizer` the sub-folder holding vocab.json + merges.txt, `parity` {engine: {metric: value}}.
    Keys this version does not know are kept in `extra` and written back unchanged.
    """

    model_config: dict[str, Any]
    precision: str
    engines: tuple[str, ...]
    envelope: dict[str, Any] = field(default_factory=dict)
    checkpoint_sha256: str | None = None
    tokenizer: str = "tokenizer"
    library_versions: dict[str, str] = field(default_factory=dict)
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["engines"] = list(self.engines)
        d.update(d.pop("extra"))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FolderManifest:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in names}
        kw["engines"] = tuple(kw.get("engines", ()))
        return cls(**kw, extra={k: v for k, v in d.items() if k not in names})


def runs_fp16(m: EngineManifest) -> bool:
    """Whether an engine runs FP16 kernels, read from what its manifest records (never guessed):
    an FP16 graph, or an FP32 graph exported or built for the FP16 flag (flavor fp32-fp16-flag)."""
    return m.precision == "fp16" or m.flavor == "fp32-fp16-flag"


# ---------------------------------------------------------------------------------------------
# Hashing


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """sha256 hex of a file, streamed in 1 MiB chunks (engines are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def onnx_files(onnx_path: str | os.PathLike[str]) -> list[Path]:
    """The files of one exported graph: `<engine>.onnx` and, when present, `<engine>.onnx.data`."""
    p = Path(onnx_path)
    data = p.with_name(p.name + ".data")
    return [p, data] if data.exists() else [p]


def onnx_sha256(onnx_path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """sha256 hex over the .onnx file followed by its .onnx.data (one stream): the graph's identity."""
    h = hashlib.sha256()
    for p in onnx_files(onnx_path):
        with open(p, "rb") as f:
            while block := f.read(chunk_size):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Atomic writes


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces `path` atomically.

    On any exception (or KeyboardInterrupt) the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Write `data` to `path` through a synced temp file + os.replace."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_manifest(
    path: str | os.PathLike[str], manifest: EngineManifest | FolderManifest | Mapping[str, Any]
) -> None:
    """Write a manifest as indented, key-sorted JSON, atomically."""
    d = manifest.to_dict() if isinstance(manifest, EngineManifest | FolderManifest) else dict(manifest)
    text = json.dumps(d, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Loading


def manifest_path_for(artifact_path: str | os.PathLike[str]) -> Path:
    """DIR/unet.onnx -> DIR/unet.json; DIR/tensorrt/unet.plan -> DIR/tensorrt/unet.json."""
    p = Path(artifact_path)
    return p.with_name(p.name.split(".", 1)[0] + ".json")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise EngineError(f"{what} {path} is missing: re-export the engine folder with `gligen-rt export`")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = first_line(e)
        raise EngineError(
            f"corrupt {what} {path} (truncated or not JSON: {msg}): re-export/rebuild the engine folder"
        ) from None
    if not isinstance(d, dict):
        raise EngineError(f"corrupt {what} {path} (not a JSON object): re-export/rebuild the engine folder")
    version = d.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise EngineError(
            f"{path} has manifest format {version} but this gligen-rt reads up to {FORMAT_VERSION}: "
            f"upgrade gligen-rt or re-export the engine folder"
        )
    return d


def load_manifest(path: str | os.PathLike[str]) -> EngineManifest:
    """Read an EngineManifest; a missing, truncated or incomplete file raises a one-line EngineError."""
    path = Path(path)
    d = _read_json(path, "engine manifest")
    try:
        return EngineManifest.from_dict(d)
    except (TypeError, ValueError) as e:
        raise EngineError(
            f"corrupt engine manifest {path} ({first_line(e)}): re-export/rebuild the engine folder"
        ) from None


def load_folder_manifest(engine_dir: str | os.PathLike[str]) -> FolderManifest:
    """Read DIR/manifest.json (one-line EngineError when missing or corrupt)."""
    path = Path(engine_dir) / FOLDER_MANIFEST
    d = _read_json(path, "engine folder manifest")
    try:
        return FolderManifest.from_dict(d)
    except (TypeError, ValueError) as e:
        raise EngineError(
            f"corrupt engine folder manifest {path} ({first_line(e)}): re-export the engine folder"
        ) from None


# ---------------------------------------------------------------------------------------------
# Verification


def fix_command(manifest: EngineManifest, engine_dir: str | os.PathLike[str] | None = None) -> str:
    """The command that regenerates an artifact: re-export for ONNX, rebuild for built engines."""
    if manifest.backend == ONNX_BACKEND:
        return "re-export the engine folder with `gligen-rt export`"
    return f"rebuild with `gligen-rt build --onnx {engine_dir or 'DIR'} --backend {manifest.backend}`"


def _engine_dir(artifact_path: Path) -> Path:
    """The engine folder (the one holding manifest.json) of an artifact inside it or a sub-folder."""
    p = artifact_path.resolve()
    for d in (p.parent, p.parent.parent):
        if (d / FOLDER_MANIFEST).is_file():
            return d
    return p.parent


def _cc(value: str | tuple[int, int] | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, tuple | list):
        return f"{value[0]}.{value[1]}"
    return str(value)


def verify(
    manifest: EngineManifest,
    *,
    spec: Any = None,
    library_versions: Mapping[str, str] | None = None,
    gpu_cc: str | tuple[int, int] | None = None,
    artifact_path: str | os.PathLike[str] | None = None,
    check_sha256: bool = True,
) -> None:
    """Raise EngineError (one line: the mismatch and the fix) unless the artifact fits.

    spec: the EngineSpec the caller expects (compared by fingerprint).
    library_versions: installed versions, e.g. {"tensorrt": "10.8.0"}; libraries named in both
        this and the manifest must match exactly.
    gpu_cc: compute capability of the GPU in use ("8.9" or (8, 9)); ignored when the manifest
        records none (portable or CPU artifacts).
    artifact_path: the artifact; its size, then (check_sha256) its sha256 must match.
    """
    from gligen_rt.engines.spec import fingerprint

    name = manifest.artifact or manifest.engine
    engine_dir = _engine_dir(Path(artifact_path)) if artifact_path is not None else None
    fix = fix_command(manifest, engine_dir)

    if spec is not None:
        want = fingerprint(spec)
        if want != manifest.spec_fingerprint:
            raise EngineError(
                f"{name} was built for spec {manifest.spec_fingerprint[:12]} but the runtime expects "
                f"{want[:12]} (engine I/O or shape envelope changed): {fix}"
            )
    for lib, installed in (library_versions or {}).items():
        built = manifest.library_versions.get(lib)
        if built is not None and installed is not None and str(built) != str(installed):
            label = _LIBRARY_NAMES.get(lib, lib)
            raise EngineError(f"{name} was built for {label} {built} but {installed} is installed: {fix}")
    want_cc, built_cc = _cc(gpu_cc), _cc(manifest.gpu_compute_capability)
    if want_cc is not None and built_cc is not None and want_cc != built_cc:
        raise EngineError(
            f"{name} was built for a GPU of compute capability {built_cc} but this GPU is {want_cc}: {fix}"
        )
    if artifact_path is not None:
        p = Path(artifact_path)
        if not p.is_file():
            raise EngineError(f"{p} is missing: {fix}")
        is_onnx = p.suffix == ".onnx"  # an exported or optimized graph: .onnx + .onnx.data
        size = sum(f.stat().st_size for f in onnx_files(p)) if is_onnx else p.stat().st_size
        if size != manifest.artifact_size:
            raise EngineError(
                f"corrupt {name}: {size} bytes but its manifest says {manifest.artifact_size} "
                f"(truncated or modified): {fix}"
            )
        if check_sha256:
            digest = onnx_sha256(p) if is_onnx else sha256_file(p)
            if digest != manifest.artifact_sha256:
                raise EngineError(f"corrupt {name}: its sha256 differs from its manifest (modified): {fix}")


def installed_versions(*modules: str) -> dict[str, str]:
    """Versions of the named backend modules that import here (lazily imported)."""
    import importlib

    out: dict[str, str] = {}
    for m in modules:
        try:
            mod = importlib.import_module(m)
        except ImportError:
            continue
        v = getattr(mod, "__version__", None)
        if v is None and hasattr(mod, "get_version"):
            v = mod.get_version()
        if v is not None:
            out[m] = str(v)
    return out
