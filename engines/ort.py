"""ONNX Runtime sessions for the exported graphs: CPU, CUDA and TensorRT execution providers.

Graph optimization is level ALL. Optimizing a multi-gigabyte UNet takes a while, so with a cache
folder the optimized model is saved once and reused: the file is keyed by the graph's sha256, the
ORT version and the provider. It is saved at level EXTENDED (fusions, constant folding: portable
across CPUs) and loaded at level ALL, which re-applies only the cheap, hardware-specific layout
passes (NCHWc block sizes depend on the CPU's vector width, so a saved ALL model is not portable).
The TensorRT provider compiles nodes, which ORT cannot save: it keeps its own engine and timing
caches in the cache folder instead.

`optimize_transformer` (opt-in, measured in the benchmarks) runs ORT's transformer optimizer for
UNets with only the fusions the target provider can execute. ORT 1.32's UNet attention fusion
reads the head count with ``int()`` of a one-element array, which NumPy 2 rejects ("only
0-dimensional arrays can be converted to Python scalars"); `_unet_model_class` subclasses its
fusion with that one read fixed (no library function is patched).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gligen_rt.core.errors import BackendUnavailable
from gligen_rt.engines.manifest import (
    ONNX_BACKEND,
    load_manifest,
    manifest_path_for,
    onnx_files,
    onnx_sha256,
)
from gligen_rt.engines.spec import EngineSpec, trt_profile

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_INSTALL = {
    "cpu": "pip install 'gligen-rt[ort]'",
    "cuda": "pip install 'gligen-rt[ort-gpu]' (onnxruntime-gpu, needs an NVIDIA GPU)",
    "tensorrt": "pip install 'gligen-rt[ort-gpu]' and TensorRT (needs an NVIDIA GPU)",
}
# Graphs above this size are saved with their weights in a .data file (protobuf's 2 GiB limit).
_EXTERNAL_DATA_BYTES = 1 << 30
# Fusions of ORT's transformer optimizer whose ops only the CUDA provider implements.
GPU_ONLY_FUSIONS = (
    "enable_nhwc_conv",
    "enable_group_norm",
    "enable_skip_group_norm",
    "enable_bias_splitgelu",
    "enable_packed_qkv",
    "enable_packed_kv",
    "enable_bias_add",
)


def import_ort() -> Any:
    """Import onnxruntime; BackendUnavailable (one line) when it is missing."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable(f"onnxruntime is not installed: {_INSTALL['cpu']}") from None
    return onnxruntime


def _check_provider(ort: Any, provider: str) -> None:
    if provider not in PROVIDERS:
        raise ValueError(f"unknown ONNX Runtime provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    if PROVIDERS[provider] not in ort.get_available_providers():
        raise BackendUnavailable(
            f"onnxruntime {ort.__version__} has no {PROVIDERS[provider]} here: {_INSTALL[provider]}"
        )


def _shape_list(shapes: dict[str, tuple[int, ...]]) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())


def provider_options(
    provider: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    fp16: bool = False,
    spec: EngineSpec | None = None,
    device_id: int = 0,
    stream: int | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The `providers` list for InferenceSession, with a fallback chain ending on the CPU.

    device_id: the CUDA device of the CUDA and TensorRT providers (``--device N``).
    stream: the address of the CUDA stream the providers compute on (``user_compute_stream``): the
        runtime's own stream, so engine calls and its CuPy work are ordered without host waits.
    tensorrt: FP16 kernels only when `fp16` says so (the export's manifest or an explicit
    ``--precision fp16``; never by default), engine and timing caches in `cache_dir`, and explicit
    profile shapes from `spec` so changing shapes inside the envelope never rebuilds an engine.
    """
    cpu = ("CPUExecutionProvider", {})
    gpu: dict[str, Any] = {"device_id": int(device_id)}
    if stream is not None:
        gpu["user_compute_stream"] = str(int(stream))
    cuda = (
        "CUDAExecutionProvider",
        {**gpu, "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": True},
    )
    if provider == "cpu":
        return [cpu]
    if provider == "cuda":
        return [cuda, cpu]
    opts: dict[str, Any] = {**gpu, "trt_fp16_enable": bool(fp16)}
    if cache_dir is not None:
        d = str(Path(cache_dir))
        opts.update(
            trt_engine_cache_enable=True,
            trt_engine_cache_path=d,
            trt_timing_cache_enable=True,
            trt_timing_cache_path=d,
        )
    if spec is not None:
        prof = trt_profile(spec)
        for i, key in enumerate(
            ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
        ):
            opts[key] = _shape_list({name: shapes[i] for name, shapes in prof.items()})
    return [(PROVIDERS["tensorrt"], opts), cuda, cpu]


def source_digest(onnx_path: str | os.PathLike[str]) -> str:
    """The graph's sha256: from its export manifest when the size still matches, else hashed here."""
    p = Path(onnx_path)
    m_path = manifest_path_for(p)
    if m_path.is_file():
        try:
            m = load_manifest(m_path)
        except Exception:  # a corrupt manifest is reported where it is verified, not here
            m = None
        size = sum(f.stat().st_size for f in onnx_files(p))
        if m is not None and m.backend == ONNX_BACKEND and m.artifact == p.name and m.artifact_size == size:
            return m.onnx_sha256
    return onnx_sha256(p)


def optimized_model_path(
    onnx_path: str | os.PathLike[str], provider: str, cache_dir: str | os.PathLike[str]
) -> Path:
    """CACHE/<engine>.<key>.onnx with key = sha256(graph sha256, ORT version, provider)[:16]."""
    ort = import_ort()
    p = Path(onnx_path)
    key = hashlib.sha256(f"{source_digest(p)}|{ort.__version__}|{provider}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{p.name.split('.', 1)[0]}.{key}.onnx"


def _session_options(ort: Any, level: Any, threads: int | None) -> Any:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return so


def _save_optimized(ort: Any, src: Path, dst: Path, providers: list, threads: int | None) -> None:
    """Run ORT's EXTENDED optimizations on `src` once and save the result as `dst` (+ .data), atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        so = _session_options(ort, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, threads)
        so.optimized_model_filepath = str(tmp / dst.name)
        if sum(f.stat().st_size for f in onnx_files(src)) > _EXTERNAL_DATA_BYTES or len(onnx_files(src)) > 1:
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", dst.name + ".data"
            )
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
            )
        log.info("optimizing %s with ONNX Runtime (once; cached as %s)", src.name, dst.name)
        session = ort.InferenceSession(str(src), so, providers=providers)
        del session
        data = tmp / (dst.name + ".data")
        if data.exists():
            os.replace(data, dst.with_name(dst.name + ".data"))
        os.replace(tmp / dst.name, dst)  # the .onnx appears last: its presence means complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def make_session(
    onnx_path: str | os.PathLike[str],
    provider: str = "cpu",
    *,
    optimized_cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    optimize: bool | None = None,
    spec: EngineSpec | None = None,
    fp16: bool = False,
    device_id: int = 0,
    stream: int | None = None,
) -> Any:
    """An onnxruntime.InferenceSession for one exported graph.

    provider: "cpu" | "cuda" | "tensorrt" (missing provider -> BackendUnavailable, one line).
    optimized_cache_dir: where the optimized model (cpu, cuda) or the TensorRT EP's engine and
        timing caches (tensorrt) live; None keeps nothing on disk.
    optimize: use/write the saved optimized model; None means yes when a cache folder is given and
        the provider is not tensorrt. The session itself always runs at level ALL.
    threads: intra-op threads (None: ORT's default, all cores).
    spec, fp16: TensorRT EP only: profile shapes from the spec, FP16 kernels (off unless asked).
    device_id, stream: CUDA / TensorRT providers: the device and the compute stream (provider_options).
    """
    ort = import_ort()
    _check_provider(ort, provider)
    src = Path(onnx_path)
    providers = provider_options(
        provider, cache_dir=optimized_cache_dir, fp16=fp16, spec=spec, device_id=device_id, stream=stream
    )
    if provider == "tensorrt" and optimized_cache_dir is not None:
        Path(optimized_cache_dir).mkdir(parents=True, exist_ok=True)
    if optimize is None:
        optimize = optimized_cache_dir is not None and provider != "tensorrt"
    model = src
    if optimize and provider != "tensorrt" and optimized_cache_dir is not None:
        model = optimized_model_path(src, provider, optimized_cache_dir)
        if not model.is_file():
            _save_optimized(ort, src, model, providers, threads)
    so = _session_options(ort, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, threads)
    return ort.InferenceSession(str(model), so, providers=providers)


def _unet_model_class() -> type:
    """ORT's UnetOnnxModel whose attention fusion reads the head count NumPy-2-safely."""
    import numpy as np
    from onnxruntime.transformers.fusion_attention_unet import FusionAttentionUnet
    from onnxruntime.transformers.onnx_model_unet import UnetOnnxModel

    class _FusionAttentionUnet(FusionAttentionUnet):
        def get_num_heads(self, reshape_q: Any, is_torch2: bool = False) -> int:
            if is_torch2:
                parent = self.model.get_parent(reshape_q, 1)
                if parent is None or parent.op_type != "Concat" or len(parent.input) != 4:
                    return 0
                value = self.model.get_constant_value(parent.input[2])
            else:
                shape = self.model.get_constant_value(reshape_q.input[1])
                ok = isinstance(shape, np.ndarray) and list(shape.shape) == [4]
                value = shape[2:3] if ok else None
            if isinstance(value, np.ndarray) and value.size == 1 and int(value.reshape(-1)[0]) > 0:
                return int(value.reshape(-1)[0])
            return 0

    class _UnetModel(UnetOnnxModel):
        def fuse_multi_head_attention(self, options: Any = None) -> None:
            for cross in (False, True):
                packed_qkv = not cross and (options is None or options.enable_packed_qkv)
                packed_kv = cross and (options is None or options.enable_packed_kv)
                _FusionAttentionUnet(
                    self,
                    self.hidden_size,
                    self.num_heads,
                    is_cross_attention=cross,
                    enable_packed_qkv=packed_qkv,
                    enable_packed_kv=packed_kv,
                ).apply()

    return _UnetModel


def optimize_transformer(
    onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str], provider: str = "cpu"
) -> Path:
    """ORT's transformer optimizer (model_type "unet") with the fusions `provider` can run.

    For "cpu" the GPU-only fusions (NhwcConv, GroupNorm, SkipGroupNorm, BiasSplitGelu, BiasAdd,
    packed QKV/KV attention) are off; what remains fuses some attention and LayerNorm patterns.
    Opt-in: on the CPU it was not faster (ENV_NOTES). Shape inference runs first, as a separate
    pass, which keeps the full-size UNet within memory. Writes `out_path` (+ .data) atomically.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown ONNX Runtime provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    import_ort()
    from onnxruntime.transformers.fusion_options import FusionOptions

    src, dst = Path(onnx_path), Path(out_path)
    options = FusionOptions("unet")
    if provider == "cpu":
        for name in GPU_ONLY_FUSIONS:
            setattr(options, name, False)
    # Shape inference as its own pass first (on a file beside the source, so relative external
    # data still resolves): inside the optimizer it ran out of memory on the full-size UNet.
    import onnx

    fd, inferred = tempfile.mkstemp(dir=src.parent, prefix=f".{src.stem}.", suffix=".inferred.onnx")
    os.close(fd)
    try:
        onnx.shape_inference.infer_shapes_path(str(src), inferred)
        model = _unet_model_class()(onnx.load(inferred), num_heads=0, hidden_size=0)
        model.optimize(options)
        model.topological_sort()
        model.model.producer_name = "onnxruntime.transformers"
        log.info("ORT transformer optimizer fused %s", model.get_fused_operator_statistics())
    finally:
        Path(inferred).unlink(missing_ok=True)
    external = (
        sum(f.stat().st_size for f in onnx_files(src)) > _EXTERNAL_DATA_BYTES or len(onnx_files(src)) > 1
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        model.save_model_to_file(str(tmp / dst.name), use_external_data_format=external)
        data = tmp / (dst.name + ".data")
        if data.exists():
            os.replace(data, dst.with_name(dst.name + ".data"))
        os.replace(tmp / dst.name, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst
