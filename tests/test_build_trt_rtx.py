"""Builders: TensorRT-RTX plans on this CPU, build() over an engine folder, ORT and OpenVINO builds,
and the TensorRT runner's control flow (fake TensorRT; real CUDA only where a GPU is present).

The ONNX graphs here are tiny toys written with onnx.helper (MatMul + Softmax, dynamic batch);
the exported GLIGEN graphs go through the same build() in the exporter's tests.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from gligen_rt.core.errors import BackendUnavailable, EngineError
from gligen_rt.engines import manifest as mf
from gligen_rt.engines.build import build
from gligen_rt.engines.manifest import (
    EngineManifest,
    FolderManifest,
    load_manifest,
    onnx_files,
    onnx_sha256,
    verify,
    write_manifest,
)
from gligen_rt.engines.spec import EngineSpec, Envelope, TensorSpec, fingerprint, spec_to_dict
from gligen_rt.engines.tensorrt import (
    RuntimeCache,
    build_engine,
    choose_flavor,
    cuda_graph_allowed,
    gpu_compute_capability,
    import_trt,
)
from gligen_rt.runtime.backend_tensorrt import PlanRunner, run_plan

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx is not installed")
WIDTH = 8
RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((WIDTH, WIDTH)).astype(np.float32)


def _has_gpu() -> bool:
    return gpu_compute_capability() is not None  # CuPy sees a CUDA device


def toy_spec(batch=(1, 2, 4)) -> EngineSpec:
    return EngineSpec(
        "toy",
        (TensorSpec("x", "float32", ("batch", WIDTH)),),
        (TensorSpec("y", "float32", ("batch", WIDTH)),),
        Envelope(batch=batch),
    )


def write_toy_onnx(path: Path, fp16: bool = False) -> Path:
    """y = softmax(x @ W); fp16: Cast to FP16 inside, FP32 at the boundary (strongly typed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])
    if fp16:
        w = numpy_helper.from_array(WEIGHT.astype(np.float16), "W")
        nodes = [
            helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("MatMul", ["x16", "W"], ["h"]),
            helper.make_node("Softmax", ["h"], ["y16"], axis=-1),
            helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
        ]
    else:
        w = numpy_helper.from_array(WEIGHT, "W")
        nodes = [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Softmax", ["h"], ["y"], axis=-1),
        ]
    graph = helper.make_graph(nodes, "toy", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def reference(x: np.ndarray) -> np.ndarray:
    h = x @ WEIGHT
    e = np.exp(h - h.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def toy_folder(tmp_path: Path, fp16: bool = False, flag: bool = False) -> Path:
    """An engine folder as the exporter writes it, holding one engine 'toy'.

    flag: an FP32 graph exported for a TensorRT-10 build with BuilderFlag.FP16.
    """
    d = tmp_path / "engines"
    d.mkdir()
    onnx_path = write_toy_onnx(d / "toy.onnx", fp16=fp16)
    spec = toy_spec()
    precision = "fp16" if fp16 else "fp32"
    flavor = "fp16-strongly-typed" if fp16 else ("fp32-fp16-flag" if flag else "fp32")
    write_manifest(
        d / "toy.json",
        EngineManifest(
            engine="toy",
            backend="onnx",
            artifact="toy.onnx",
            artifact_sha256=onnx_sha256(onnx_path),
            artifact_size=sum(f.stat().st_size for f in onnx_files(onnx_path)),
            spec_fingerprint=fingerprint(spec),
            spec=spec_to_dict(spec),
            onnx_sha256=onnx_sha256(onnx_path),
            model_config={"name": "toy"},
            precision=precision,
            flavor=flavor,
            checkpoint_sha256="c" * 64,
            parity={"max_abs": 1e-6},
        ),
    )
    write_manifest(
        d / "manifest.json",
        FolderManifest(model_config={"name": "toy"}, precision=precision, engines=("toy",)),
    )
    return d


# ---------------------------------------------------------------------------------------------
# TensorRT-RTX builder (runs on this CPU)


@needs_rtx
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16-strongly-typed"])
def test_build_plan_with_rtx(tmp_path: Path, fp16: bool):
    onnx_path = write_toy_onnx(tmp_path / "toy.onnx", fp16=fp16)
    flavor = choose_flavor("tensorrt-rtx", "fp16" if fp16 else "fp32")
    assert flavor == ("fp16-strongly-typed" if fp16 else "fp32")
    plan = build_engine(
        onnx_path,
        toy_spec(),
        tmp_path / "out" / "toy.plan",
        backend="tensorrt-rtx",
        precision="fp16" if fp16 else "fp32",
        flavor=flavor,
        timing_cache_path=tmp_path / "out" / "timing.cache",
        workspace=1 << 28,
    )
    assert plan.stat().st_size > 0
    m = load_manifest(tmp_path / "out" / "toy.json")
    assert m.backend == "tensorrt-rtx" and m.flavor == flavor and m.artifact == "toy.plan"
    assert m.builder["strongly_typed"] is True and m.builder["profile"]["x"] == [[1, 8], [2, 8], [4, 8]]
    assert m.builder["control_flow"] == [] and cuda_graph_allowed(m.builder)  # no If: may be captured
    assert m.gpu_compute_capability is None  # RTX plans are portable
    assert m.onnx_sha256 == onnx_sha256(onnx_path)
    import tensorrt_rtx

    verify(
        m, spec=toy_spec(), library_versions={"tensorrt_rtx": tensorrt_rtx.__version__}, artifact_path=plan
    )
    assert not (tmp_path / "out" / "timing.cache").exists()  # timing cache is a no-op in RTX
    assert sorted(p.name for p in plan.parent.iterdir()) == ["toy.json", "toy.plan"]


@needs_rtx
def test_static_build_records_static_spec(tmp_path: Path):
    onnx_path = write_toy_onnx(tmp_path / "toy.onnx")
    build_engine(
        onnx_path,
        toy_spec(),
        tmp_path / "toy.plan",
        backend="tensorrt-rtx",
        precision="fp32",
        flavor="fp32",
        timing_cache_path=None,
        static_shape=(2, 64, 64),
    )
    m = load_manifest(tmp_path / "toy.json")
    assert m.builder["profile"]["x"] == [[2, 8]] * 3
    assert m.spec["envelope"]["batch"] == [2, 2, 2]
    with pytest.raises(EngineError):
        verify(m, spec=toy_spec())  # the dynamic spec is a different engine


@needs_rtx
def test_parse_and_io_errors_are_one_line(tmp_path: Path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(EngineError) as e:
        build_engine(bad, toy_spec(), tmp_path / "bad.plan", backend="tensorrt-rtx")
    assert "could not parse bad.onnx" in str(e.value) and "\n" not in str(e.value)
    onnx_path = write_toy_onnx(tmp_path / "toy.onnx")
    wrong = EngineSpec(
        "toy",
        (TensorSpec("sample", "float32", ("batch", WIDTH)),),
        (TensorSpec("y", "float32", ("batch", WIDTH)),),
        Envelope(batch=(1, 1, 2)),
    )
    with pytest.raises(EngineError) as e:
        build_engine(onnx_path, wrong, tmp_path / "toy.plan", backend="tensorrt-rtx")
    assert "does not match the toy spec" in str(e.value) and "\n" not in str(e.value)
    int_spec = EngineSpec(
        "toy",
        (TensorSpec("x", "int32", ("batch", WIDTH)),),
        (TensorSpec("y", "float32", ("batch", WIDTH)),),
        Envelope(batch=(1, 1, 2)),
    )
    with pytest.raises(EngineError) as e:
        build_engine(onnx_path, int_spec, tmp_path / "toy.plan", backend="tensorrt-rtx")
    assert "spec says int32" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "toy.plan").exists()


@needs_rtx
def test_interrupted_build_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    onnx_path = write_toy_onnx(tmp_path / "toy.onnx")
    out = tmp_path / "out"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(mf.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_engine(onnx_path, toy_spec(), out / "toy.plan", backend="tensorrt-rtx")
    assert list(out.iterdir()) == []


def test_flavor_choice():
    assert choose_flavor("tensorrt", "fp32", "fp16") == "fp32-fp16-flag"
    assert choose_flavor("tensorrt", "fp16") == "fp16-strongly-typed"
    assert choose_flavor("tensorrt", "fp32") == "fp32"
    with pytest.raises(EngineError) as e:
        choose_flavor("tensorrt-rtx", "fp32", "fp16")
    assert "strongly typed" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(EngineError):
        choose_flavor("tensorrt", "fp16", "fp32")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_import_trt_without_tensorrt_is_one_line():
    with pytest.raises(BackendUnavailable) as e:
        import_trt("tensorrt")
    assert str(e.value) == "tensorrt is not installed: pip install 'gligen-rt[trt]' (needs an NVIDIA GPU)"


# ---------------------------------------------------------------------------------------------
# build() over an engine folder


@needs_rtx
def test_build_folder_rtx(tmp_path: Path):
    d = toy_folder(tmp_path, fp16=True)
    paths = build(d, "tensorrt-rtx", progress=False)
    assert paths == [d / "tensorrt-rtx" / "toy.plan"]
    m = load_manifest(d / "tensorrt-rtx" / "toy.json")
    assert m.checkpoint_sha256 == "c" * 64 and m.parity == {"max_abs": 1e-6}
    assert m.flavor == "fp16-strongly-typed" and m.precision == "fp16"
    with pytest.raises(EngineError) as e:
        build(d, "tensorrt-rtx", precision="fp32", progress=False)
    assert "re-export" in str(e.value)


@needs_rtx
def test_build_flag_flavor_folder(tmp_path: Path):
    """An export meant for BuilderFlag.FP16: RTX (strongly typed only) refuses it unless asked for FP32."""
    d = toy_folder(tmp_path, flag=True)
    with pytest.raises(EngineError) as e:
        build(d, "tensorrt-rtx", progress=False)
    assert "strongly typed" in str(e.value)
    build(d, "tensorrt-rtx", precision="fp32", progress=False)
    assert load_manifest(d / "tensorrt-rtx" / "toy.json").flavor == "fp32"
    build(d, "ort-cpu", progress=False)
    m = load_manifest(d / "ort-cpu" / "toy.json")
    assert (m.precision, m.flavor) == ("fp32", "fp32")


def test_build_folder_ort_cpu(tmp_path: Path):
    import onnxruntime as ort

    d = toy_folder(tmp_path)
    (artifact,) = build(d, "ort-cpu", progress=False)
    assert artifact.parent == d / "ort-cpu" and artifact.name.startswith("toy.") and artifact.is_file()
    m = load_manifest(d / "ort-cpu" / "toy.json")
    assert m.library_versions == {"onnxruntime": ort.__version__}
    verify(m, spec=toy_spec(), artifact_path=d / "ort-cpu" / m.artifact)

    from gligen_rt.engines.ort import make_session

    x = RNG.standard_normal((3, WIDTH)).astype(np.float32)
    mtime = artifact.stat().st_mtime_ns
    session = make_session(d / "toy.onnx", "cpu", optimized_cache_dir=d / "ort-cpu", threads=1)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], reference(x), rtol=1e-5, atol=1e-6)
    assert artifact.stat().st_mtime_ns == mtime  # optimized once, reused
    plain = make_session(d / "toy.onnx", "cpu")
    np.testing.assert_allclose(plain.run(None, {"x": x})[0], reference(x), rtol=1e-5, atol=1e-6)


def test_ort_missing_provider_is_one_line(tmp_path: Path):
    import onnxruntime as ort

    from gligen_rt.engines.ort import make_session

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    onnx_path = write_toy_onnx(tmp_path / "toy.onnx")
    for provider in ("cuda", "tensorrt"):
        with pytest.raises(BackendUnavailable) as e:
            make_session(onnx_path, provider)
        assert "\n" not in str(e.value) and "ExecutionProvider" in str(e.value)


def test_build_folder_openvino(tmp_path: Path):
    d = toy_folder(tmp_path)
    (artifact,) = build(d, "openvino", precision="bf16", progress=False)
    out = d / "openvino-bf16"
    assert artifact == out / "toy.xml" and (out / "toy.bin").is_file()
    m = load_manifest(out / "toy.json")
    assert m.backend == "openvino-bf16" and m.artifact == "toy.xml"
    assert m.builder["precision_hint"] == "bf16" and m.builder["weights"] == "fp16"
    assert any((out / "cache").iterdir())
    verify(m, spec=toy_spec(), artifact_path=out / m.artifact)

    from gligen_rt.engines.openvino import compile_model

    x = RNG.standard_normal((2, WIDTH)).astype(np.float32)
    compiled = compile_model(out / "toy.xml", "CPU", "f32", out / "cache")
    np.testing.assert_allclose(compiled({"x": x})["y"], reference(x), rtol=2e-3, atol=2e-3)


def test_build_rejects_corrupt_folder(tmp_path: Path):
    d = toy_folder(tmp_path)
    (d / "toy.onnx").write_bytes((d / "toy.onnx").read_bytes()[:-4])
    with pytest.raises(EngineError) as e:
        build(d, "ort-cpu", progress=False)
    assert str(e.value).startswith("corrupt toy.onnx") and "gligen-rt export" in str(e.value)
    with pytest.raises(EngineError):
        build(d, "tensorrt-8", progress=False)
    with pytest.raises(EngineError):
        build(d, "ort-cpu", engines=["unet"], progress=False)
    (d / "manifest.json").unlink()
    with pytest.raises(EngineError) as e:
        build(d, "ort-cpu", progress=False)
    assert "missing" in str(e.value)


# ---------------------------------------------------------------------------------------------
# The runner (runtime/backend_tensorrt.py PlanRunner, the one TensorRT runner): stand-ins for
# TensorRT and the CUDA stream here (tests/fake_trt.py), real CUDA where there is a GPU


def _runner(builder: dict, static: bool = False, scratch: int | None = None):
    from fake_trt import FakeDeviceArrays, FakeEngine, FakeTrt

    arrays = FakeDeviceArrays()
    spec = toy_spec((2, 2, 2) if static else (1, 2, 4))
    engine = FakeEngine(spec, arrays, lambda feeds: {"y": reference(feeds["x"])}, scratch=1000)
    buf = arrays.empty((scratch,), np.uint8) if scratch else None
    return PlanRunner(FakeTrt, engine, spec, builder, arrays, "tensorrt", scratch=buf), arrays


def test_runner_runs_on_one_stream_without_waiting():
    """Every enqueue goes to the backend's stream, and a call never waits for the device."""
    runner, arrays = _runner({"control_flow": []})
    for batch in (1, 1, 3, 2, 4, 4):
        x = RNG.standard_normal((batch, WIDTH))  # float64: cast to the engine's float32
        y = runner.run({"x": x})["y"]
        assert y.shape == (batch, WIDTH) and y.dtype == np.float32
        np.testing.assert_allclose(y, reference(x.astype(np.float32)), rtol=1e-5, atol=1e-6)
    assert arrays.stream.waits == 0
    assert runner.context.streams and set(runner.context.streams) == {arrays.stream.ptr}
    assert runner.graph is None  # dynamic engines are enqueued, never captured
    with pytest.raises(EngineError) as e:
        runner.run({"x": np.zeros((5, WIDTH), np.float32)})
    assert "outside the plan's profile" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "builder,captured",
    [
        ({"control_flow": []}, True),
        ({"control_flow": ["CONDITION", "CONDITIONAL_INPUT", "CONDITIONAL_OUTPUT"]}, False),
        ({}, False),  # a plan built before control flow was recorded: never captured
    ],
    ids=["no-control-flow", "if-layers", "unrecorded"],
)
def test_static_plan_is_captured_only_without_control_flow(builder: dict, captured: bool):
    """A CUDA graph replays the branch its capture took: a plan with If layers (the gate-skip UNet)
    is enqueued on every call instead, and gives each input its own result."""
    assert cuda_graph_allowed(builder) is captured
    runner, arrays = _runner(builder, static=True)
    assert (runner.graph is not None) is captured
    for _ in range(3):
        x = RNG.standard_normal((2, WIDTH)).astype(np.float32)
        np.testing.assert_allclose(runner.run({"x": x})["y"], reference(x), rtol=1e-5, atol=1e-6)
    assert arrays.stream.launches == (3 if captured else 0)
    with pytest.raises(EngineError) as e:
        runner.run({"x": np.zeros((1, WIDTH), np.float32)})
    assert "built static" in str(e.value)


def test_runner_uses_the_shared_scratch_buffer():
    """USER_MANAGED contexts get the one scratch buffer; a new buffer re-captures the graph."""
    from fake_trt import FakeTrt

    runner, arrays = _runner({"control_flow": []}, static=True, scratch=4096)
    assert runner.context.strategy == FakeTrt.ExecutionContextAllocationStrategy.USER_MANAGED
    assert runner.context.device_memory == (arrays.pointer(runner.scratch), 4096)
    first = runner.graph
    bigger = arrays.empty((8192,), np.uint8)
    runner.set_scratch(bigger)
    assert runner.context.device_memory == (arrays.pointer(bigger), 8192) and runner.graph is not first


def test_rtx_context_settings_and_runtime_cache(tmp_path: Path):
    """TensorRT-RTX: its own CUDA-graph strategy only where capture is allowed, the runtime cache
    set on every context and saved across processes, one place for both (create_context)."""
    from fake_trt import FakeDeviceArrays, FakeEngine, FakeTrt

    arrays = FakeDeviceArrays()
    spec = toy_spec((2, 2, 2))
    engine = FakeEngine(spec, arrays, lambda feeds: {"y": reference(feeds["x"])}, scratch=10)
    cache = RuntimeCache(engine, tmp_path / "runtime.cache")
    for builder, strategy in (({"control_flow": []}, "WHOLE_GRAPH_CAPTURE"), ({}, "DISABLED")):
        runner = PlanRunner(FakeTrt, engine, spec, builder, arrays, "tensorrt-rtx", runtime_cache=cache)
        config = runner.context.config
        assert config.cuda_graph_strategy == getattr(FakeTrt.CudaGraphStrategy, strategy)
        assert config.runtime_cache is cache.cache
        assert runner.graph is None  # RTX captures by itself: we never do
    cache.cache.blob = b"kernels"
    cache.save()
    again = RuntimeCache(engine, tmp_path / "runtime.cache")
    assert again.cache.blob == b"kernels"


@pytest.mark.gpu
@needs_rtx
@pytest.mark.skipif(not _has_gpu(), reason="needs an NVIDIA GPU (CuPy sees none)")
def test_run_rtx_plan_needs_gpu(tmp_path: Path):
    onnx_path = write_toy_onnx(tmp_path / "toy.onnx")
    plan = build_engine(onnx_path, toy_spec(), tmp_path / "toy.plan", backend="tensorrt-rtx")
    x = RNG.standard_normal((3, WIDTH)).astype(np.float32)
    np.testing.assert_allclose(
        run_plan(plan, toy_spec(), {"x": x}, backend="tensorrt-rtx")["y"], reference(x), rtol=1e-3, atol=1e-4
    )


@pytest.mark.slow
def test_ort_transformer_optimizer_fuses_attention_for_cpu(tmp_path_factory: pytest.TempPathFactory):
    """ORT's UNet transformer optimizer runs under NumPy 2 (its head-count read is fixed in a subclass),
    fuses SD's attention into MultiHeadAttention nodes the CPU provider runs, and keeps the output."""
    import collections

    import onnx
    import onnxruntime as ort
    from test_runtime_support import engine_folder

    from gligen_rt.engines.ort import optimize_transformer

    src = engine_folder(tmp_path_factory, "text-box", False, plain=True) / "unet.onnx"
    out = optimize_transformer(src, tmp_path_factory.mktemp("ortopt") / "unet.onnx", "cpu")
    ops = collections.Counter(n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node)
    assert ops["MultiHeadAttention"] > 0, ops.most_common(10)
    feeds = {
        "sample": RNG.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([500], np.float32),
        "context": RNG.standard_normal((2, 77, 32)).astype(np.float32),
        "tokens": RNG.standard_normal((2, 30, 32)).astype(np.float32),
        "gate": np.array([1], np.float32),
    }
    cpu = ["CPUExecutionProvider"]
    want = ort.InferenceSession(str(src), providers=cpu).run(None, feeds)[0]
    got = ort.InferenceSession(str(out), providers=cpu).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
