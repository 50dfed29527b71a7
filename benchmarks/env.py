"""The environment a result came from: CPU model and flags or GPU, library versions, git sha.

Library versions are read from package metadata (nothing heavy is imported). Nothing here names
a person or a machine path.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "gligen-rt",
    "numpy",
    "torch",
    "diffusers",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "tensorrt",
    "tensorrt-rtx",
)
# CPU flags that decide which kernels run (matrix units, vector widths, reduced precision).
INTERESTING_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if not line.strip():
            break  # first processor only
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def gpu_info() -> list[dict[str, str]]:
    """name, driver and memory of each NVIDIA GPU (nvidia-smi), [] without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            gpus.append(dict(zip(("name", "driver", "memory", "compute_capability"), parts)))
    return gpus


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_sha(root: Path | None = None) -> str | None:
    """HEAD's sha, with ``-dirty`` when tracked files differ from it; None outside a checkout."""
    root = root or Path(__file__).resolve().parents[1]
    git = shutil.which("git")
    if git is None:
        return None
    try:
        sha = subprocess.run([git, "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=20)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment() -> dict[str, Any]:
    """Everything the report prints about where a result came from."""
    import psutil

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cpu_flags": [f for f in INTERESTING_FLAGS if f in flags],
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "gpus": gpu_info(),
        "versions": versions(),
        "git_sha": git_sha(),
    }
