"""OpenVINO: the exported graphs converted once to OpenVINO IR, compiled for the CPU.

Three builds (``gligen-rt build --backend B``), each in DIR/<B>/ and run by the runtime backend of
the same name:

| build / backend | IR weights on disk | inference precision | what it costs                         |
|-----------------|--------------------|---------------------|---------------------------------------|
| openvino        | FP32               | f32                 | exact (~1e-6 of the ONNX graph)       |
| openvino-bf16   | FP16               | bf16 (AVX512_BF16 / AMX units) | eps relative L2 ~2.6e-2    |
| openvino-int8   | INT8 (NNCF, asym.) | bf16 activations    | weights 1 byte each in memory         |
| openvino-int8a  | INT8, UNets W8A8   | int8 in the UNets' convolutions and linear layers, bf16 elsewhere | calibration at build time (benchmarks/README.md) |

The IR is written by ``ov.save_model`` (``compress_to_fp16`` for bf16: the CPU converts the weights
to BF16 while compiling, so FP16 storage loses nothing BF16 keeps; INT8 by
``nncf.compress_weights``; the UNets of ``openvino-int8a`` by ``nncf.quantize`` on calibration inputs, see
``quantize_int8``). Loading compiles the IR and keeps only the compiled model: the read
model is released. With ``cache_dir`` (OpenVINO's CACHE_DIR) compiled blobs are kept there and later
loads skip compilation (measured in benchmarks/README.md).

Resident memory: OpenVINO memory-maps the IR's .bin and a cache blob (both hold the weights as
stored, FP16 for bf16) and the compiled model keeps that mapping for its whole life, although the
CPU plugin copies the weights of its matrix and convolution kernels into its own buffers while
compiling (converted to BF16, repacked) and never reads those pages again. Left alone, the mapped
pages stay resident beside that copy: the SD-1.4 UNet held 2.1 GB of mapped FP16 blob beside 2.3 GB
of BF16 weights. Some weights are read or converted only at the first inference (a text encoder's
token table; its FP16 matrices, converted to BF16 then).
``compile_model`` therefore drops this process's resident pages of those files while it compiles
and once after, and the runtime backend does the same during and after each compiled model's first
inference (runtime/backend_openvino.py) (``drop_mapped_pages``, Linux ``madvise(MADV_DONTNEED)`` on
read-only shared mappings: their content is the file's, so a page read again is faulted back in
unchanged).

Attention: OpenVINO's CPU plugin fuses each ``MatMul -> Softmax -> MatMul`` of our graphs (SD's
self- and cross-attention and the fused gated self-attention, export/fuse.py) into one
multi-head-attention kernel (a ``Subgraph`` node of its runtime graph); ``attention_fusions``
counts them in a compiled model, and a test checks that every attention of the tiny UNet is fused.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import functools
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gligen_rt.core.errors import BackendUnavailable, EngineError

log = logging.getLogger(__name__)

PRECISION_HINTS = ("f32", "bf16", "f16")
IR_SUFFIX = ".xml"  # + .bin beside it (the weights)
# Weight storage of the IR: "fp32" as exported, "fp16" (ov.save_model's compress_to_fp16),
# "int8-w" (NNCF weight compression, INT8 asymmetric per output channel), "int8-a" (NNCF
# post-training quantization: INT8 weights and INT8 activations, from calibration inputs).
WEIGHT_FORMATS = ("fp32", "fp16", "int8-w", "int8-a")
# build / runtime backend -> (inference precision hint, IR weight format)
BUILDS: dict[str, tuple[str, str]] = {
    "openvino": ("f32", "fp32"),
    "openvino-bf16": ("bf16", "fp16"),
    "openvino-int8": ("bf16", "int8-w"),
    # The UNets "int8-a" (their calibration inputs come from the build); every other engine int8-w.
    "openvino-int8a": ("bf16", "int8-a"),
}
# Compiled-blob cache of unbuilt (ONNX) folders, read by both runtimes (runtime/native).
ONNX_CACHE_ENV = "GLIGEN_RT_OPENVINO_CACHE"
# Seconds between two drops of the weight files' mapped pages while a model compiles: the CPU
# plugin reads them at page-cache speed, so this bounds the pages resident at once to ~100 MB.
PAGE_DROP_INTERVAL_S = 0.02
_MADV_DONTNEED = 4  # <sys/mman.h> on Linux


def import_openvino() -> Any:
    """Import openvino; BackendUnavailable (one line) when it is missing."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable("openvino is not installed: pip install 'gligen-rt[openvino]'") from None
    return openvino


def compile_config(
    precision_hint: str = "f32", cache_dir: str | os.PathLike[str] | None = None, threads: int | None = None
) -> dict[str, Any]:
    """The properties passed to Core.compile_model: precision hint, LATENCY (one request uses every
    core), CACHE_DIR, INFERENCE_NUM_THREADS (None: one per core)."""
    if precision_hint not in PRECISION_HINTS:
        raise ValueError(f"precision hint {precision_hint!r} is not one of {PRECISION_HINTS}")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision_hint, "PERFORMANCE_HINT": "LATENCY"}
    if cache_dir is not None:
        config["CACHE_DIR"] = str(Path(cache_dir))
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def compile_model(
    model_path: str | os.PathLike[str],
    device: str = "CPU",
    precision_hint: str = "f32",
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    threads: int | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Any:
    """An openvino.CompiledModel for one graph (an IR .xml or an exported .onnx).

    device: an OpenVINO device name ("CPU", "GPU", "AUTO"); precision_hint: "f32" | "bf16" | "f16";
    cache_dir: folder for compiled blobs (created); threads: inference threads (None: all cores);
    shapes: {input: shape} to compile a static model (otherwise the graph's own shapes).
    The model read for a reshape is released once compiled: only the compiled model holds weights,
    and the pages of the mapped weight files are dropped while and after it compiles.
    Call the result with {input name: array}; it returns outputs indexable by name.
    """
    ov = import_openvino()
    core = ov.Core()
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    config = compile_config(precision_hint, cache_dir, threads)
    with mapped_pages_dropped(*mapped_files(model_path, cache_dir)):
        # An ONNX graph with a cache is read first: OpenVINO then keys its blob on the model's
        # content, where a path would key it on the file's name (an exported folder replaced in
        # place keeps its names).
        if shapes or (cache_dir is not None and Path(model_path).suffix == ".onnx"):
            model = core.read_model(str(model_path))
            if shapes:
                model.reshape({name: list(shape) for name, shape in shapes.items()})
            compiled = core.compile_model(model, device, config)
            del model
            return compiled
        # Compiling a built IR from its path lets a cached blob skip reading the model at all.
        return core.compile_model(str(model_path), device, config)


def onnx_blob_cache(precision_hint: str) -> Path | None:
    """The folder of compiled blobs for graphs compiled from an exported folder's ONNX (no build)
    with ``precision_hint``: $GLIGEN_RT_OPENVINO_CACHE/<hint>, or None (no cache) when it is unset or
    empty. Off by default, since a blob is about as large as the graph's weights; a build always
    caches in DIR/<build>/cache (one build, one hint per graph).

    One folder per hint, because OpenVINO (2026.4) keys a blob on the graph and not on
    INFERENCE_PRECISION_HINT: in one shared folder, the same graph compiled ``bf16`` after ``f32``
    imports the FP32 blob under BF16 settings, and on a CPU with AMX-BF16 and AVX512-FP16 its
    outputs are NaN (measured on the text encoder)."""
    if precision_hint not in PRECISION_HINTS:
        raise ValueError(f"precision hint {precision_hint!r} is not one of {PRECISION_HINTS}")
    value = os.environ.get(ONNX_CACHE_ENV, "").strip()
    return Path(value) / precision_hint if value else None


def weight_files(model_path: str | os.PathLike[str]) -> list[Path]:
    """The files OpenVINO may map for a graph: the graph itself and its weights (an IR's .bin, an
    ONNX graph's external data)."""
    p = Path(model_path)
    return [p, weights_path(p), p.with_name(p.name + ".data")]


def mapped_files(
    model_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None
) -> tuple[list[Path], list[Path]]:
    """(files, folders) whose mapped pages a graph compiled with ``cache_dir`` may leave resident:
    what ``compile_model`` and the runtime backend's first inference drop."""
    return weight_files(model_path), [Path(cache_dir)] if cache_dir is not None else []


def drop_mapped_pages(
    files: Iterable[str | os.PathLike[str]], dirs: Iterable[str | os.PathLike[str]] = ()
) -> int:
    """Drop this process's resident pages of read-only shared mappings of `files` or of files under
    `dirs`; returns the bytes of the mappings advised (0 off Linux).

    ``madvise(MADV_DONTNEED)`` on such a mapping only unmaps its pages from this process: they are
    the file's bytes (still in the page cache), and a later read faults the same bytes back in.
    Writable or private mappings are left alone (dropping copy-on-write pages would lose writes).
    """
    if not sys.platform.startswith("linux"):
        return 0
    names = {os.path.realpath(f) for f in files}
    roots = tuple(os.path.join(os.path.realpath(d), "") for d in dirs)
    libc = _libc()
    advised = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(None, 5)  # range perms offset dev inode path
            if len(fields) < 6 or "w" in fields[1] or fields[1][3] != "s":
                continue
            path = fields[5].rstrip("\n")
            if path not in names and not path.startswith(roots):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if libc.madvise(start, end - start, _MADV_DONTNEED) == 0:
                advised += end - start
            elif ctypes.get_errno() not in (errno.ENOMEM, errno.EINVAL):  # unmapped meanwhile
                raise OSError(ctypes.get_errno(), f"madvise on {path}: {os.strerror(ctypes.get_errno())}")
    return advised


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


@contextlib.contextmanager
def mapped_pages_dropped(
    files: Iterable[str | os.PathLike[str]],
    dirs: Iterable[str | os.PathLike[str]] = (),
    interval: float = PAGE_DROP_INTERVAL_S,
) -> Iterator[None]:
    """Around a compile: drop the mapped pages of `files` / files under `dirs` every `interval`
    seconds from a thread (OpenVINO releases the GIL while it compiles), and once at the end, so
    the weights as stored and the plugin's copy of them are never resident together."""
    files, dirs = list(files), list(dirs)
    if not sys.platform.startswith("linux"):
        yield
        return
    stop = threading.Event()

    def drop_until_stopped() -> None:
        while not stop.wait(interval):
            drop_mapped_pages(files, dirs)

    worker = threading.Thread(target=drop_until_stopped, name="openvino-page-drop", daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()
        drop_mapped_pages(files, dirs)


def save_ir(
    onnx_path: str | os.PathLike[str],
    xml_path: str | os.PathLike[str],
    weights: str = "fp32",
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    calibration: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Convert an exported graph to OpenVINO IR (xml + bin), atomically (the .xml appears last).

    weights: "fp32" | "fp16" | "int8-w" | "int8-a" (see WEIGHT_FORMATS); shapes: {input: shape}
    saves a static IR (compiled without a reshape at load); calibration: the graph's inputs
    ({input: array} each) that "int8-a" quantizes on (quantize_int8). Returns the .xml path.
    """
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weight format {weights!r} is not one of {WEIGHT_FORMATS}")
    if weights == "int8-a" and not calibration:
        raise ValueError("weight format int8-a needs calibration inputs")
    ov = import_openvino()
    xml = Path(xml_path)
    model = ov.Core().read_model(str(onnx_path))
    if shapes:
        model.reshape({name: list(shape) for name, shape in shapes.items()})
    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=xml.parent, prefix=f".{xml.name}."))
    try:
        if weights in ("int8-w", "int8-a"):
            if any(op.get_type_name() == "If" for op in model.get_ordered_ops()):
                # A gate-skip UNet (fusers behind If): NNCF cannot build its graph of the model as
                # read from ONNX (the bodies' nodes are not found); read back from IR it can.
                ov.save_model(model, str(tmp / "fp32.xml"), compress_to_fp16=False)
                del model
                model = ov.Core().read_model(str(tmp / "fp32.xml"))
            if weights == "int8-w":
                model = compress_weights_int8(model)
            else:
                assert calibration is not None
                model = quantize_int8(model, calibration)
        ov.save_model(model, str(tmp / xml.name), compress_to_fp16=weights == "fp16")
        del model
        os.replace(tmp / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
        os.replace(tmp / xml.name, xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml


def _import_nncf() -> Any:
    try:
        import nncf
    except ImportError:
        raise BackendUnavailable("nncf is not installed: pip install 'gligen-rt[openvino]'") from None
    return nncf


@contextlib.contextmanager
def _nncf_on_stderr(nncf: Any) -> Iterator[None]:
    """NNCF's progress bars on stderr (stdout is the build's list of artifacts), its INFO tables off."""
    level = logging.getLogger("nncf").level
    nncf.set_log_level(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        nncf.set_log_level(level)


def compress_weights_int8(model: Any) -> Any:
    """NNCF's INT8 weight compression (asymmetric, per output channel) of an ov.Model.

    Weights of MatMul / Convolution / Gather become INT8 with FP scales and zero points; the CPU
    decompresses them inside its kernels, so they stay 1 byte each in memory. Activations are not
    quantized (no calibration data).
    """
    nncf = _import_nncf()
    mode = nncf.CompressWeightsMode.INT8_ASYM
    with _nncf_on_stderr(nncf):
        for op in model.get_ordered_ops():
            if op.get_type_name() == "If":  # NNCF leaves If bodies (the gate-skip fusers) alone: do each
                for i in range(2):
                    op.set_function(i, nncf.compress_weights(op.get_function(i), mode=mode))
        return nncf.compress_weights(model, mode=mode)


def quantize_int8(model: Any, calibration: Sequence[Mapping[str, Any]]) -> Any:
    """NNCF post-training quantization of a UNet (ov.Model): INT8 weights and INT8 activations into
    its convolutions and linear layers, on statistics of ``calibration`` (its inputs along real
    trajectories, {input: array} each; every one is used).

    Left in BF16 (``int8_ignored``), as measured at SD-1.4 size by benchmarks/int8_probe.py (all
    INT8: 39.4 dB against FP32; this split: 44.7 dB at 1.56x BF16's step):
    - the attention products Q K^T and P V: they stay inside OpenVINO's fused attention kernel;
    - the 1x1 shortcut convolution of every up-block resnet, whose input concatenates the skip and
      the deep features (two value ranges under one INT8 scale), and the UNet's conv_in / conv_out.
    NNCF's transformer preset: symmetric per-channel weights, SmoothQuant on the linear layers.
    """
    nncf = _import_nncf()
    with _nncf_on_stderr(nncf):
        return nncf.quantize(
            model,
            nncf.Dataset(list(calibration)),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(names=int8_ignored(model), validate=False),
        )


def int8_ignored(model: Any) -> list[str]:
    """Node names quantize_int8 keeps out of INT8 activations: attention_products + split_convolutions."""
    return attention_products(model) + split_convolutions(model)


def split_convolutions(model: Any) -> list[str]:
    """Convolutions whose input INT8 serves badly: the 1x1 shortcut of every up-block resnet (its
    input is the raw concatenation of the skip and the deep features, two ranges in one tensor:
    Q-Diffusion's shortcut-splitting finding), and the UNet's first and last convolutions."""
    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Convolution"
        and (
            ("up_blocks" in op.get_friendly_name() and "/conv_shortcut/" in op.get_friendly_name())
            or "/conv_in/" in op.get_friendly_name()
            or "/conv_out/" in op.get_friendly_name()
        )
    ]


def attention_products(model: Any) -> list[str]:
    """MatMuls whose two inputs are both activations (the attention products Q K^T and P V)."""

    def constant(output: Any) -> bool:
        node = output.get_node()
        while (
            node.get_type_name() in ("Convert", "Reshape", "Transpose", "Unsqueeze") and node.get_input_size()
        ):
            if (
                node.get_type_name() == "Convert"
                or node.input_value(0).get_node().get_type_name() == "Constant"
            ):
                node = node.input_value(0).get_node()
            else:
                break
        return node.get_type_name() == "Constant"

    return [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "MatMul" and not any(constant(op.input_value(i)) for i in range(2))
    ]


def int8_kernels(compiled: Any) -> int:
    """Nodes of a compiled model's runtime graph whose first input (the activation) is INT8:
    convolutions, fully connected layers and attention kernels that compute in INT8 (INT8 weights
    alone do not count)."""
    n = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        if op.get_input_size() and op.input(0).get_element_type().get_type_name() in ("i8", "u8"):
            n += op.get_rt_info()["layerType"].astype(str) in (
                "Convolution",
                "FullyConnected",
                "MatMul",
                "Subgraph",
            )
    return n


def weights_path(xml_path: str | os.PathLike[str]) -> Path:
    """The .bin beside an IR .xml."""
    return Path(xml_path).with_suffix(".bin")


def check_weights(xml_path: str | os.PathLike[str], size: int | None) -> None:
    """EngineError (one line) when the IR's .bin is missing or has another size than recorded."""
    p = weights_path(xml_path)
    if not p.is_file():
        raise EngineError(f"{p} is missing: rebuild with `gligen-rt build`")
    if size is not None and p.stat().st_size != size:
        raise EngineError(
            f"corrupt {p}: {p.stat().st_size} bytes but its manifest says {size}: rebuild with `gligen-rt build`"
        )


def runtime_layer_types(compiled: Any) -> collections.Counter:
    """Layer types of a compiled model's runtime (execution) graph, counted."""
    return collections.Counter(
        op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()
    )


def attention_fusions(model_path: str | os.PathLike[str], compiled: Any) -> tuple[int, int]:
    """(attention patterns in the graph, those the CPU plugin fused into one kernel).

    A pattern is one Softmax of the source graph; it counts as fused when the runtime node that
    executes it also executes two MatMuls (the multi-head-attention Subgraph or ScaledAttn kernel)
    rather than a stand-alone Softmax between two matrix products.
    """
    ov = import_openvino()
    source = ov.Core().read_model(str(model_path))
    types = {op.get_friendly_name(): op.get_type_name() for op in source.get_ops()}
    softmaxes = {n for n, t in types.items() if t == "Softmax"}
    del source
    fused = 0
    for op in compiled.get_runtime_model().get_ops():
        names = op.get_rt_info()["originalLayersNames"].astype(str).split(",")
        kinds = collections.Counter(types.get(n) for n in names)
        if kinds["Softmax"] and kinds["MatMul"] >= 2 * kinds["Softmax"]:
            fused += kinds["Softmax"]
    return len(softmaxes), fused
