"""`gligen-rt triton-repo` on a real Triton Inference Server: the `tritonserver` (with the Python
backend) that the `nvidia-pytriton` wheel ships, in its own environment (scripts/triton_env.sh;
its numpy<2 pin keeps it out of ours). The BLS model runs our loop with the engines in-process, and
with the engines as Triton models called through BLS; images equal direct pipeline calls, a bad
request fails alone with the one-line message, and concurrent clients each get their own image.
Skips when no such server is installed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from test_runtime_support import engine_folder

from gligen_rt.benchmarks.serve_load import bodies, check, expected_images, run_phase, triton_sender
from gligen_rt.benchmarks.triton_local import TritonServer, backends, missing_reason
from gligen_rt.core.request import request_from_json
from gligen_rt.runtime.pipeline import GligenPipeline
from gligen_rt.serve.triton import write_repository

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
BODY = {"prompt": "a cat", "objects": [{"phrase": "a cat", "box": [0.1, 0.1, 0.6, 0.7]}], "steps": 2}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return engine_folder(tmp_path_factory, "text-box")


def test_repository_layout_and_refusals(folder: Path, tmp_path: Path) -> None:
    repo = write_repository(
        folder, tmp_path / "repo", engine_models="onnxruntime", instances=2, kind="KIND_GPU"
    )
    cfg = (repo / "gligen" / "config.pbtxt").read_text()
    assert 'backend: "python"' in cfg and "{ count: 2, kind: KIND_GPU }" in cfg and '"REQUEST"' in cfg
    unet = (repo / "gligen_unet" / "config.pbtxt").read_text()
    assert (
        'platform: "onnxruntime_onnx"' in unet
        and '{ name: "sample", data_type: TYPE_FP32, dims: [ -1, 4, -1, -1 ] }' in unet
    )
    assert (repo / "gligen_unet" / "1" / "model.onnx").is_file() and (repo / "README.md").is_file()
    for onnx in folder.glob("*.onnx"):  # every engine is an ONNX Runtime model of the repository
        em = repo / f"gligen_{onnx.stem}"
        assert (em / "1" / "model.onnx").read_bytes() == onnx.read_bytes()
        assert 'platform: "onnxruntime_onnx"' in (em / "config.pbtxt").read_text()
    from gligen_rt.core.errors import GligenError

    with pytest.raises(GligenError, match="exists"):
        write_repository(folder, repo)
    with pytest.raises(GligenError, match="build the plans first"):
        write_repository(folder, tmp_path / "trt", engine_models="tensorrt")
    assert not (tmp_path / "trt").exists() and not (tmp_path / "trt.tmp").exists()


def test_repository_for_tensorrt_plans(folder: Path, tmp_path: Path) -> None:
    """The tensorrt_plan repository's files and config (plans stand in: serving them needs a GPU)."""
    engines = tmp_path / "engines"
    shutil.copytree(folder, engines)
    (engines / "tensorrt").mkdir()
    for onnx in folder.glob("*.onnx"):
        (engines / "tensorrt" / f"{onnx.stem}.plan").write_bytes(b"plan " + onnx.stem.encode())
    repo = write_repository(
        engines, tmp_path / "repo", engine_models="tensorrt", kind="KIND_GPU", gpus=[0, 1]
    )
    unet = (repo / "gligen_unet" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in unet and "{ count: 1, kind: KIND_GPU, gpus: [ 0, 1 ] }" in unet
    assert (repo / "gligen_unet" / "1" / "model.plan").read_bytes() == b"plan unet"
    bls = (repo / "gligen" / "config.pbtxt").read_text()
    assert 'key: "ENGINE_MODELS", value: { string_value: "tensorrt" }' in bls


@pytest.mark.slow  # a server start and a model load per case: about a minute on a busy 2-core machine
@pytest.mark.parametrize("engine_models", ["none", "python", "onnxruntime"])
def test_triton_serves_the_repository(folder: Path, tmp_path: Path, engine_models: str) -> None:
    if engine_models == "onnxruntime" and "onnxruntime" not in backends():
        pytest.skip(
            f"the local tritonserver has no onnxruntime backend (it has: {', '.join(backends())}), "
            "so onnxruntime_onnx engine models cannot be served here"
        )
    repo = write_repository(folder, tmp_path / "repo", engine_models=engine_models)
    server = TritonServer(repo, tmp_path)
    try:
        with GligenPipeline.from_engines(folder, "ort-cpu") as pipe:
            r = server.infer({**BODY, "seed": 4, "height": 64, "width": 64})
            assert r.status_code == 200, r.text
            out = {o["name"]: o for o in r.json()["outputs"]}
            got = np.asarray(out["IMAGES"]["data"], dtype=np.uint8).reshape(out["IMAGES"]["shape"])
            want = pipe(request_from_json({**BODY, "seed": 4, "height": 64, "width": 64})).images
            assert np.array_equal(got, want) and out["SEED"]["data"] == [4]

            bad = server.infer({**BODY, "objects": [{"phrase": "", "box": [0.1, 0.1, 0.5, 0.5]}]})
            assert bad.status_code in (400, 500)
            assert (
                bad.json()["error"]
                == "objects[0] has no phrase: the text-box model needs a phrase for every box"
            )

            if engine_models == "none":  # concurrent clients, each its own exact image
                work = bodies(8, 300, steps=1, size=64)
                records, _ = run_phase(triton_sender(server.url), work, 4, time.monotonic() + 300)
                assert check(records, expected_images(pipe, work)) == []
    finally:
        server.close()
