"""Reduced precision against the FP32 reference on the tiny text-box model (the other modalities'
OpenVINO BF16 numbers come with their parity tests): FP16 graphs on ORT CPU and on OpenVINO, and
OpenVINO's BF16 precision hint on the FP32 graphs, each >= 30 dB PSNR."""

from __future__ import annotations

import pytest
from test_runtime_support import engine_folder, psnr, reference, request_for, write_images

from gligen_rt.runtime import GligenPipeline


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.mark.parametrize(
    "precision,backend", [("fp16", "ort-cpu"), ("fp16", "openvino"), ("fp32", "openvino-bf16")]
)
def test_reduced_precision(tmp_path_factory, images, precision: str, backend: str) -> None:
    folder = engine_folder(tmp_path_factory, "text-box", False, plain=True, precision=precision)
    request = request_for("text-box", False, images)
    expected = reference("text-box")(request)
    with GligenPipeline.from_engines(folder, backend, threads=2) as pipe:
        assert pipe.folder.precision == precision
        value = psnr(pipe(request).images, expected.images)
    print(f"PSNR text-box {precision} on {backend}: {value:.1f} dB")
    assert value >= 30.0
