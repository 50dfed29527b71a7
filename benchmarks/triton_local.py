"""A local Triton Inference Server for trying `gligen-rt triton-repo` on this machine: the
`tritonserver` binary and Python backend that the `nvidia-pytriton` wheel ships, in an environment
of its own (scripts/triton_env.sh; the wheel pins numpy<2, ours has numpy 2). Used by
tests/test_triton.py and `serve_load --server triton`.

The wheel's server (2.51) has only the Python backend (its backends/ folder holds `python` alone):
repositories with onnxruntime_onnx or tensorrt_plan engine models cannot be served by it; a server
with more backends is used with all of them (`backends()` says which).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gligen_rt.core.errors import BackendUnavailable

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def triton_env() -> Path:
    """The environment scripts/triton_env.sh made: $GLIGEN_RT_TRITON_ENV or ~/.cache/gligen-rt-triton."""
    return Path(os.environ.get("GLIGEN_RT_TRITON_ENV", Path.home() / ".cache" / "gligen-rt-triton"))


def find_pytriton(env: Path | None = None) -> Path | None:
    """The pytriton package folder of `env` when it holds a tritonserver with a Python PY backend stub."""
    env = env or triton_env()
    found = next(iter(sorted((env / "venv" / "lib").glob("python3*/site-packages/pytriton"))), None)
    if found is None or not (found / "tritonserver" / "python_backend_stubs" / PY).is_dir():
        return None
    return found


def missing_reason(env: Path | None = None) -> str | None:
    """Why no local tritonserver can run (None when one can)."""
    env = env or triton_env()
    if find_pytriton(env) is None:
        return f"no tritonserver with a Python {PY} backend stub under {env} (run scripts/triton_env.sh)"
    return None


def backends(env: Path | None = None) -> list[str]:
    """The backends the local tritonserver has (names of its backends/ folders); [] without one."""
    pytriton = find_pytriton(env)
    if pytriton is None:
        return []
    return sorted(p.name for p in (pytriton / "tritonserver" / "backends").iterdir() if p.is_dir())


def _free_port() -> int:
    from gligen_rt.serve.cli import bind

    with bind("127.0.0.1", 0) as s:
        return s.getsockname()[1]


class TritonServer:
    """tritonserver on loopback over `repo`, with the Python backend assembled in `work`; returns
    once /v2/health/ready answers 200 (AssertionError with the log's tail when it never does)."""

    def __init__(self, repo: Path, work: Path, env: Path | None = None, timeout: float = 300.0) -> None:
        import httpx

        pytriton = find_pytriton(env)
        if pytriton is None:
            raise BackendUnavailable(missing_reason(env) or "no tritonserver")
        server = pytriton / "tritonserver"
        backend = work / "backends" / "python"
        backend.mkdir(parents=True)
        for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(server / "backends" / "python" / f, backend / f)
        shutil.copy2(server / "python_backend_stubs" / PY / "triton_python_backend_stub", backend)
        for other in backends(env):
            if other != "python":
                (work / "backends" / other).symlink_to(server / "backends" / other)
        libs = pytriton.parent / "nvidia_pytriton.libs"
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
        # The stub's embedded Python takes its prefix from `python3` on PATH: keep this process's
        # virtualenv off it, so the stub runs the system Python (with numpy<2, which the stub needs).
        venv_bin = Path(sys.prefix, "bin").resolve()
        path = os.pathsep.join(
            p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p).resolve() != venv_bin
        )
        env_vars = {**os.environ, "LD_LIBRARY_PATH": str(libs), "PATH": path}
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env_vars)
        deadline = time.monotonic() + timeout
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

    def infer(self, body: dict[str, Any], model: str = "gligen") -> Any:
        """POST one request JSON to `model` (KServe v2 JSON); the httpx response."""
        import httpx

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

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
