"""The GPU path right by construction, checked without a GPU: stand-ins for CuPy's stream, TensorRT
and ONNX Runtime's GPU providers record what the runtime asks of them.

- one ``--device N`` reaches every GPU backend (provider options, TensorRT, CuPy);
- FP16 only where a manifest or an explicit flag says so (ort-trt runtime and build);
- one stream per request and one host wait for the device per request, whatever the step count;
- all TensorRT contexts share one scratch buffer sized to the largest engine.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_trt import FakeDeviceArrays, FakeEngine, FakeTrt
from test_runtime_support import engine_folder

from gligen_rt.core.backends import TRT_MODULES
from gligen_rt.core.request import GenerationRequest, GroundedObject
from gligen_rt.engines import manifest as M
from gligen_rt.engines.ort import provider_options
from gligen_rt.engines.spec import fingerprint, spec_to_dict
from gligen_rt.runtime import GligenPipeline, make_backend
from gligen_rt.runtime.folder import EngineFolder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return engine_folder(tmp_path_factory, "text-box", False, plain=True)


def _request(steps: int) -> GenerationRequest:
    return GenerationRequest(
        prompt="a room", objects=(GroundedObject((0.1, 0.2, 0.5, 0.6), "a cat"),), seed=3, steps=steps
    )


# ---------------------------------------------------------------------------------------------
# --device N and the stream reach ONNX Runtime's providers


def test_provider_options_carry_device_stream_and_no_silent_fp16() -> None:
    cuda = dict(provider_options("cuda", device_id=1, stream=1234))["CUDAExecutionProvider"]
    assert cuda["device_id"] == 1 and cuda["user_compute_stream"] == "1234"
    trt = provider_options("tensorrt", device_id=2, stream=99)
    (name, opts), (_, cuda) = trt[0], trt[1]
    assert name == "TensorrtExecutionProvider"
    assert opts["device_id"] == cuda["device_id"] == 2
    assert opts["user_compute_stream"] == cuda["user_compute_stream"] == "99"
    assert opts["trt_fp16_enable"] is False  # FP16 only when asked
    assert dict(provider_options("tensorrt", fp16=True)[:1])["TensorrtExecutionProvider"]["trt_fp16_enable"]


class _FakeCupyArrays(FakeDeviceArrays):
    """What OrtBackend makes for GPU providers, without CuPy: remembers its device."""

    def __init__(self, device_id: int = 0) -> None:
        super().__init__()
        self.device_id = device_id


@pytest.mark.parametrize("provider", ["cuda", "trt"])
def test_ort_gpu_backend_passes_device_stream_and_manifest_precision(
    folder: Path, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    """`make_backend("ort-trt", device_id=1)`: every session is made on device 1, on the backend's
    stream, and an FP32 export runs FP32 kernels (no manifest asks for FP16)."""
    from gligen_rt.runtime import backend_ort

    calls: list[dict[str, Any]] = []

    def fake_session(path: Any, ep: str, **kw: Any) -> Any:
        calls.append({"ep": ep, **kw})
        import onnxruntime

        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    monkeypatch.setattr(backend_ort, "CupyArrays", _FakeCupyArrays)
    monkeypatch.setattr(backend_ort, "make_session", fake_session)
    backend = make_backend(f"ort-{provider}", device_id=1)
    assert backend.arrays.device_id == 1
    backend.load(EngineFolder.open(folder, check_sha256=False), ["text_encoder", "unet"])
    assert len(calls) == 2
    for call in calls:
        assert call["device_id"] == 1 and call["stream"] == backend.arrays.stream.ptr
        assert call["fp16"] is False
    assert backend.fp16 == {"text_encoder": False, "unet": False}


def test_device_flag_reaches_gpu_backends_only() -> None:
    """One flag for every backend: CPU backends ignore --device, GPU backends take it."""
    backend = make_backend("ort-cpu", device_id=3)
    assert backend.name == "ort-cpu" and not backend.arrays.on_device
    from gligen_rt.cli import build_parser

    args = build_parser().parse_args(["generate", "--device", "2", "--backend", "ort-cuda"])
    assert args.device == 2
    assert build_parser().parse_args(["generate"]).device == 0


# ---------------------------------------------------------------------------------------------
# FP16 never switched on silently: ort-trt build


def test_ort_trt_build_keeps_the_export_precision(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gligen-rt build --backend ort-trt` on an FP32 export builds FP32 unless --precision fp16;
    the built manifest records what was built (and the runtime runs what it records)."""
    from gligen_rt.engines import build as B
    from gligen_rt.engines import ort

    seen: list[bool] = []
    monkeypatch.setattr(ort, "make_session", lambda *a, **kw: seen.append(kw["fp16"]))
    for precision, want in ((None, "fp32"), ("fp16", "fp16")):
        out = tmp_path / f"ort-trt-{precision}"
        B.build(folder, "ort-trt", out, precision=precision, engines=["vae_decoder"], progress=False)
        m = M.load_manifest(out / "vae_decoder.json")
        assert (m.precision, m.builder["fp16"], seen[-1]) == (want, want == "fp16", want == "fp16")


# ---------------------------------------------------------------------------------------------
# One stream, one wait per request


class _CountingArrays(FakeDeviceArrays):
    """Counts the host's waits for the stream and its read-backs; host memory for ORT CPU (the
    pipeline and the loop never branch on where arrays live)."""

    on_device = False


@pytest.mark.parametrize("steps", [3, 6])
def test_one_host_wait_per_request(folder: Path, steps: int) -> None:
    """The host waits for the device once per request (no wait per engine call or per step), and
    reads back a fixed number of arrays; the images equal a plain host run's."""
    with GligenPipeline.from_engines(folder, "ort-cpu", threads=1) as pipe:
        expected = pipe(_request(steps))
        arrays = _CountingArrays()
        pipe.backend.arrays = arrays
        result = pipe(_request(steps))
    assert arrays.stream.waits == 1
    assert arrays.host_copies == 3  # phrase embeddings, latents, decoded images
    assert np.array_equal(result.images, expected.images)
    assert len(result.step_times) == steps and all(t >= 0 for t in result.step_times)
    assert result.timings["engines"] <= result.timings["total"]


# ---------------------------------------------------------------------------------------------
# TensorRT backend: one scratch buffer for all engines, plans verified, runtime cache saved


def _fake_plans(src: Path, dst: Path, backend: str, scratch: dict[str, int]) -> EngineFolder:
    """A copy of `src` with DIR/<backend>/<engine>.plan stand-ins and their manifests."""
    shutil.copytree(src, dst)
    folder = EngineFolder.open(dst, check_sha256=False)
    out = folder.built_dir(backend)
    out.mkdir()
    arrays = _CountingArrays()
    for name, spec in folder.specs.items():
        plan = out / f"{name}.plan"
        plan.write_bytes(f"{backend}:{name}".encode())
        FakeTrt.plans[plan.read_bytes()] = FakeEngine(spec, arrays, lambda feeds: {}, scratch=scratch[name])
        M.write_manifest(
            out / f"{name}.json",
            M.EngineManifest(
                engine=name,
                backend=backend,
                artifact=plan.name,
                artifact_sha256=M.sha256_file(plan),
                artifact_size=plan.stat().st_size,
                spec_fingerprint=fingerprint(spec),
                spec=spec_to_dict(spec),
                onnx_sha256=folder.onnx_manifests[name].onnx_sha256,
                model_config=folder.manifest.model_config,
                precision="fp32",
                flavor="fp32",
                library_versions={TRT_MODULES[backend]: FakeTrt.__version__},
                builder={"control_flow": []},
            ),
        )
    return folder


@pytest.mark.parametrize("backend", ["tensorrt", "tensorrt-rtx"])
def test_tensorrt_engines_share_one_scratch_buffer(folder: Path, tmp_path: Path, backend: str) -> None:
    from gligen_rt.runtime.backend_tensorrt import TensorRtBackend

    names = list(EngineFolder.open(folder, check_sha256=False).specs)
    scratch = {n: 1000 * (i + 1) for i, n in enumerate(names)}
    fake = _fake_plans(folder, tmp_path / "dir", backend, scratch)
    arrays = _CountingArrays()
    trt = TensorRtBackend(backend, trt_module=FakeTrt, arrays=arrays)
    trt.load(fake, names[:2])
    trt.load(fake, names[2:])  # a larger need later: one new buffer, handed to every context
    assert trt.scratch.nbytes == max(scratch.values())
    ptr = arrays.pointer(trt.scratch)
    for runner in trt._runners.values():
        assert runner.context.device_memory == (ptr, trt.scratch.nbytes)
        assert runner.context.strategy == FakeTrt.ExecutionContextAllocationStrategy.USER_MANAGED
    assert {n: m["scratch"] for n, m in trt.memory.items()} == scratch
    trt.release(names[:1])
    assert names[0] not in trt.specs and trt.scratch is not None
    trt.close()
    assert (fake.built_dir(backend) / "runtime.cache").is_file() == (backend == "tensorrt-rtx")
