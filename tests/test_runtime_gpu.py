"""GPU backends: latents stay on the device (CuPy) for the whole loop, and the images match the
reference. Each test skips with the reason where its GPU, CuPy, onnxruntime-gpu or TensorRT is
missing (always on CPU-only CI)."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
from test_runtime_support import engine_folder, psnr, reference, request_for, write_images

from gligen_rt.runtime import GligenPipeline


def _gpu_reason() -> str | None:
    if importlib.util.find_spec("cupy") is None:
        return "needs CuPy (pip install 'gligen-rt[cuda13]' or [cuda12]) and an NVIDIA GPU"
    import cupy

    try:
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return None
    except Exception:
        pass
    return "needs an NVIDIA GPU (CuPy sees none)"


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_gpu_reason() is not None, reason=_gpu_reason() or "")]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_images(tmp_path_factory.mktemp("images"))


def _count(pipe: GligenPipeline, method: str) -> list[int]:
    """Wrap a method of the backend's arrays; the list's one element counts the calls."""
    count = [0]
    arrays = pipe.backend.arrays
    original = getattr(arrays, method)

    def counted(*a):
        count[0] += 1
        return original(*a)

    setattr(arrays, method, counted)
    return count


def _count_host_copies(pipe: GligenPipeline) -> list[int]:
    return _count(pipe, "to_host")


@pytest.mark.parametrize("modality,inpaint", [("text-box", False), ("hed", False), ("text-box", True)])
def test_device_loop_on_torch_cuda(tmp_path_factory, images, modality: str, inpaint: bool) -> None:
    """The torch backend on CUDA feeds the loop CuPy arrays: the images match the CPU reference and
    the host sees a fixed number of arrays per request, whatever the step count."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    folder = engine_folder(tmp_path_factory, modality, inpaint, plain=True)
    ref = reference(modality, inpaint)
    counts = []
    for steps in (4, 8):
        request = request_for(modality, inpaint, images, steps=steps)
        expected = ref(request)
        model = copy.deepcopy(ref.model)
        with GligenPipeline.from_engines(folder, "torch", model=model, device="cuda") as pipe:
            assert pipe.backend.arrays.on_device
            count = _count_host_copies(pipe)
            waits = _count(pipe, "synchronize")
            result = pipe(request)
        counts.append(count[0])
        assert waits[0] == 1, f"the host waited for the stream {waits[0]} times in one request"
        value = psnr(result.images, expected.images)
        print(f"PSNR {modality}{' inpaint' if inpaint else ''} torch-cuda {steps} steps: {value:.1f} dB")
        assert value >= 45.0
    assert counts[0] == counts[1] <= 4, f"host copies per request grow with steps: {counts}"


def test_ort_cuda_matches_reference(tmp_path_factory, images) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (CUDAExecutionProvider)")
    folder = engine_folder(tmp_path_factory, "text-box", False)
    request = request_for("text-box", False, images)
    expected = reference("text-box")(request)
    with GligenPipeline.from_engines(folder, "ort-cuda") as pipe:
        count = _count_host_copies(pipe)
        result = pipe(request)
    assert count[0] <= 4
    assert psnr(result.images, expected.images) >= 40.0


def test_tensorrt_plans_match_reference(tmp_path_factory, images) -> None:
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("needs TensorRT (pip install 'gligen-rt[trt]')")
    from gligen_rt.engines.build import build

    folder = engine_folder(tmp_path_factory, "text-box", False)
    request = request_for("text-box", False, images)
    expected = reference("text-box")(request)
    build(folder, "tensorrt", static=(1, 64, 64), progress=False)  # static: CUDA graphs
    with GligenPipeline.from_engines(folder, "tensorrt") as pipe:
        results = [pipe(request).images for _ in range(2)]  # the second call replays the graphs
    assert np.array_equal(results[0], results[1])
    assert psnr(results[0], expected.images) >= 40.0
