"""`gligen-rt triton-repo` on a real Triton Inference Server: the `tritonserver` (with the Python
backend) that the `nvidia-pytriton` wheel ships, in its own environment (scripts/triton_env.sh;
its numpy<2 pin keeps it out of ours). The BLS model runs our loop with the engines in-process, and
with the engines as Triton models called through BLS; images equal direct pipeline calls, a bad
request fails alone with the one-line message, and concurrent clients each get their own image.
Skips when no such server is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_runtime_support import engine_folder

from gligen_rt.benchmarks.serve_load import bodies, check, expected_images, run_phase, triton_sender
from gligen_rt.core.request import request_from_json
from gligen_rt.runtime.pipeline import GligenPipeline
from gligen_rt.serve.triton import write_repository

httpx = pytest.importorskip("httpx")

ENV = Path(os.environ.get("GLIGEN_RT_TRITON_ENV", Path.home() / ".cache" / "gligen-rt-triton"))
PYTRITON = next(iter(sorted((ENV / "venv" / "lib").glob("python3*/site-packages/pytriton"))), None)
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
pytestmark = pytest.mark.skipif(
    PYTRITON is None or not (PYTRITON / "tritonserver" / "python_backend_stubs" / PY).is_dir(),
    reason=f"no tritonserver with a Python {PY} backend stub under {ENV} (run scripts/triton_env.sh)",
)
BODY = {"prompt": "a cat", "objects": [{"phrase": "a cat", "box": [0.1, 0.1, 0.6, 0.7]}], "steps": 2}


def _free_port() -> int:
    from gligen_rt.serve.cli import bind

    with bind("127.0.0.1", 0) as s:
        return s.getsockname()[1]


class Triton:
    """tritonserver on loopback over `repo`, with the Python backend assembled in `work`."""

    def __init__(self, repo: Path, work: Path) -> None:
        server = PYTRITON / "tritonserver"
        backend = work / "backends" / "python"
        backend.mkdir(parents=True)
        for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(server / "backends" / "python" / f, backend / f)
        shutil.copy2(server / "python_backend_stubs" / PY / "triton_python_backend_stub", backend)
        libs = PYTRITON.parent / "nvidia_pytriton.libs"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "triton.log"
        cmd = [
            str(server / "bin" / "tritonserver"),
            f"--model-repository={repo}",
            f"--backend-directory={work / 'backends'}",
            "--http-address=127.0.0.1",
            f"--http-port={self.port}",
            "--allow-grpc=false",
            "--allow-metrics=false",
            "--exit-timeout-secs=5",
            # a busy shared CPU can starve the stub past the default 30 s health check
            "--backend-config=python,stub-timeout-seconds=300",
        ]
        # The stub's embedded Python takes its prefix from `python3` on PATH: keep this test's
        # virtualenv off it, so the stub runs the system Python (with numpy<2, which the stub needs).
        venv_bin = Path(sys.prefix, "bin").resolve()
        path = os.pathsep.join(
            p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p).resolve() != venv_bin
        )
        env = {**os.environ, "LD_LIBRARY_PATH": str(libs), "PATH": path}
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                tail = self.log.read_bytes()[-3000:].decode(errors="replace")
                raise AssertionError(f"tritonserver did not become ready:\n{tail}")
            time.sleep(0.5)

    def infer(self, body: dict, model: str = "gligen") -> httpx.Response:
        payload = {
            "inputs": [{"name": "REQUEST", "shape": [1], "datatype": "BYTES", "data": [json.dumps(body)]}]
        }
        return httpx.post(f"{self.url}/v2/models/{model}/infer", json=payload, timeout=300)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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
    from gligen_rt.core.errors import GligenError

    with pytest.raises(GligenError, match="exists"):
        write_repository(folder, repo)
    with pytest.raises(GligenError, match="build the plans first"):
        write_repository(folder, tmp_path / "trt", engine_models="tensorrt")
    assert not (tmp_path / "trt").exists() and not (tmp_path / "trt.tmp").exists()


@pytest.mark.slow  # a server start and a model load per case: about a minute on a busy 2-core machine
@pytest.mark.parametrize("engine_models", ["none", "python"])
def test_triton_serves_the_repository(folder: Path, tmp_path: Path, engine_models: str) -> None:
    repo = write_repository(folder, tmp_path / "repo", engine_models=engine_models)
    server = Triton(repo, tmp_path)
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
