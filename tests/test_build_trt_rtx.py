"""Builders: TensorRT-RTX plans on this CPU, build() over an engine folder, ORT and OpenVINO builds,
and the TensorRT runner's control flow (fake TensorRT; real CUDA only where a GPU is present).

The ONNX graphs here are tiny toys written with onnx.helper (MatMul + Softmax, dynamic batch);
the exported GLIGEN graphs go through the same build() in the exporter's tests.
"""

from __future__ import annotations

import importlib.util
import json
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
from gligen_rt.engines.tensorrt import TrtEngineRunner, build_engine, choose_flavor, import_trt

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx is not installed")
WIDTH = 8
RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((WIDTH, WIDTH)).astype(np.float32)


def _has_gpu() -> bool:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return False
    err, count = cudart.cudaGetDeviceCount()
    return err == cudart.cudaError_t.cudaSuccess and count > 0


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
# The runner: fake TensorRT over a fake (host) device here, over real CUDA where there is a GPU


class _FakeTrt:
    """The slice of the TensorRT Python API TrtEngineRunner uses; the engine computes the toy."""

    __version__ = "0.0-fake"

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, level: int) -> None:
            self.level = level

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    @staticmethod
    def nptype(dtype):
        return dtype

    class Runtime:
        def __init__(self, logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            return _FakeEngine() if data == b"toy-plan" else None


class _FakeEngine:
    num_io_tensors = 2

    def get_tensor_name(self, i: int) -> str:
        return ("x", "y")[i]

    def get_tensor_dtype(self, name: str):
        return np.float32

    def get_tensor_mode(self, name: str) -> str:
        return "input" if name == "x" else "output"

    def create_execution_context(self):
        return _FakeContext()


class _FakeContext:
    kernel = None  # set per device: (context, stream) -> None

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.enqueues = 0

    def set_input_shape(self, name, shape) -> bool:
        if not 1 <= shape[0] <= 4 or tuple(shape[1:]) != (WIDTH,):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes["x"]

    def set_tensor_address(self, name, ptr) -> None:
        self.addresses[name] = ptr

    def execute_async_v3(self, stream) -> bool:
        self.enqueues += 1
        type(self).kernel(self, stream)
        return True


class _HostDevice:
    """CudaDevice's interface over host memory, with 'graphs' that replay the captured calls."""

    def __init__(self) -> None:
        self.mem: dict[int, np.ndarray] = {}
        self.next = 1
        self.stream_handle = 7
        self.frees = 0

    def compute_capability(self):
        return None

    def malloc(self, n: int) -> int:
        ptr, self.next = self.next, self.next + 1
        self.mem[ptr] = np.zeros(n, np.uint8)
        return ptr

    def free(self, ptr: int) -> None:
        del self.mem[ptr]
        self.frees += 1

    def to_device(self, ptr, a) -> None:
        self.mem[ptr][: a.nbytes] = a.view(np.uint8).ravel()

    def to_host(self, a, ptr) -> None:
        a.view(np.uint8).ravel()[:] = self.mem[ptr][: a.nbytes]

    def synchronize(self) -> None:
        pass

    def capture(self, enqueue):
        return ("graph", enqueue)

    def launch(self, graph) -> None:
        graph[1]()

    def destroy_graph(self, graph) -> None:
        pass

    def close(self) -> None:
        pass


def _host_kernel(device: _HostDevice):
    def kernel(ctx: _FakeContext, stream) -> None:
        n = int(np.prod(ctx.shapes["x"]))
        x = device.mem[ctx.addresses["x"]][: 4 * n].view(np.float32).reshape(ctx.shapes["x"])
        device.mem[ctx.addresses["y"]][: 4 * n] = reference(x).astype(np.float32).view(np.uint8).ravel()

    return kernel


def _cuda_kernel(device):
    """On the GPU the fake engine is an identity: a device-to-device copy (graph-capturable)."""
    rt = device.rt

    def kernel(ctx: _FakeContext, stream) -> None:
        n = 4 * int(np.prod(ctx.shapes["x"]))
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        (err,) = rt.cudaMemcpyAsync(ctx.addresses["y"], ctx.addresses["x"], n, kind, device.stream)
        assert err == rt.cudaError_t.cudaSuccess

    return kernel


@pytest.mark.parametrize("cuda_graph", [False, True])
@pytest.mark.parametrize(
    "where", ["host", pytest.param("cuda", marks=pytest.mark.gpu)], ids=["fake-device", "cuda"]
)
def test_runner_control_flow(tmp_path: Path, where: str, cuda_graph: bool):
    if where == "cuda":
        if not _has_gpu():
            pytest.skip("needs an NVIDIA GPU")
        from gligen_rt.engines.tensorrt import CudaDevice

        device = CudaDevice()
        _FakeContext.kernel = staticmethod(_cuda_kernel(device))
        expect = lambda x: x  # noqa: E731
    else:
        device = _HostDevice()
        _FakeContext.kernel = staticmethod(_host_kernel(device))
        expect = reference
    plan = tmp_path / "toy.plan"
    plan.write_bytes(b"toy-plan")
    runner = TrtEngineRunner(
        plan, backend="tensorrt", cuda_graph=cuda_graph, device=device, trt_module=_FakeTrt
    )
    with pytest.raises(EngineError):
        runner.run({"x": np.zeros((1, WIDTH), np.float32)})  # not loaded
    runner.load()
    assert runner.input_names == ("x",) and runner.output_names == ("y",)
    for batch in (1, 1, 3, 2, 4, 4):
        x = RNG.standard_normal((batch, WIDTH))  # float64: cast to the engine's float32
        y = runner.run({"x": x})["y"]
        assert y.shape == (batch, WIDTH) and y.dtype == np.float32
        np.testing.assert_allclose(y, expect(x.astype(np.float32)), rtol=1e-5, atol=1e-6)
    if cuda_graph:
        assert len(runner._graphs) >= 1
    with pytest.raises(EngineError) as e:
        runner.run({"x": np.zeros((5, WIDTH), np.float32)})
    assert "outside the engine's profile" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(EngineError):
        runner.run({"z": np.zeros((1, WIDTH), np.float32)})
    runner.close()
    if where == "cuda":
        device.close()
    else:
        assert device.mem == {}


def test_runner_rejects_bad_plan_and_manifest(tmp_path: Path):
    plan = tmp_path / "toy.plan"
    plan.write_bytes(b"garbage")
    runner = TrtEngineRunner(plan, device=_HostDevice(), trt_module=_FakeTrt)
    with pytest.raises(EngineError) as e:
        runner.load()
    assert "could not load toy.plan" in str(e.value)
    # A manifest from another TensorRT version stops the load before deserializing.
    plan.write_bytes(b"toy-plan")
    spec = toy_spec()
    write_manifest(
        tmp_path / "toy.json",
        EngineManifest(
            engine="toy",
            backend="tensorrt",
            artifact="toy.plan",
            artifact_sha256=mf.sha256_file(plan),
            artifact_size=plan.stat().st_size,
            spec_fingerprint=fingerprint(spec),
            spec=spec_to_dict(spec),
            onnx_sha256="0" * 64,
            model_config={},
            precision="fp32",
            flavor="fp32",
            library_versions={"tensorrt": "10.3.0"},
        ),
    )
    with pytest.raises(EngineError) as e:
        TrtEngineRunner(plan, spec=spec, device=_HostDevice(), trt_module=_FakeTrt).load()
    assert "built for TensorRT 10.3.0 but 0.0-fake is installed" in str(e.value)
    data = json.loads((tmp_path / "toy.json").read_text())
    data["library_versions"] = {"tensorrt": "0.0-fake"}
    (tmp_path / "toy.json").write_text(json.dumps(data))
    TrtEngineRunner(plan, spec=spec, device=_HostDevice(), trt_module=_FakeTrt).load()


@needs_rtx
def test_run_rtx_plan_needs_gpu(tmp_path: Path):
    if not _has_gpu():
        pytest.skip("needs an NVIDIA GPU")
    onnx_path = write_toy_onnx(tmp_path / "toy.onnx")
    plan = build_engine(onnx_path, toy_spec(), tmp_path / "toy.plan", backend="tensorrt-rtx")
    with TrtEngineRunner(plan, backend="tensorrt-rtx", spec=toy_spec()) as runner:
        x = RNG.standard_normal((3, WIDTH)).astype(np.float32)
        np.testing.assert_allclose(runner.run({"x": x})["y"], reference(x), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_ort_transformer_optimizer_fuses_attention_for_cpu(tmp_path_factory: pytest.TempPathFactory):
    """ORT's UNet transformer optimizer runs under NumPy 2 (its head-count read is fixed in a subclass),
    fuses SD's attention into MultiHeadAttention nodes the CPU provider runs, and keeps the output."""
    import collections

    import onnx
    import onnxruntime as ort
    from test_runtime_support import engine_folder

    from gligen_rt.engines.ort import optimize_transformer

    src = engine_folder(tmp_path_factory, "text-box", False, plain=False) / "unet.onnx"
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
