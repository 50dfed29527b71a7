"""The native runtime (runtime/native: library gligen_rt, C API, CLI gligen-rt-native) end to end.

Configures and builds the root CMakeLists.txt (Release) into build/native, then runs its ctest
suite: native images equal to the Python runtime's on tiny-random engine folders of every modality
(OpenVINO FP32 >= 60 dB, BF16 >= 45 dB; in practice identical), host numerics bit for bit against
the Python modules, the C API, and bad input (one line, exit 2, no file). The tokenizer and noise
tests of the same suite run in test_native_bits.py. Skips with the reason where cmake, a C++
compiler, OpenVINO or a system library is missing. .ci/run builds and runs the suite itself (also
under ASan + UBSan) and sets GLIGEN_RT_NATIVE_CI=1 so it is not run twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "native"


def _skip_reason() -> str | None:
    if os.environ.get("GLIGEN_RT_NATIVE_CI"):
        return "the CI runs the native ctest suite itself (Release and ASan + UBSan) after pytest"
    cmake = shutil.which("cmake")
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cmake is None or cxx is None:
        return f"needs cmake and a C++17 compiler (cmake: {cmake}, c++: {cxx})"
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "needs OpenVINO's C++ SDK from the openvino wheel (pip install openvino)"
    for header, package in (
        ("/usr/include/png.h", "libpng-dev"),
        ("/usr/include/nlohmann/json.hpp", "nlohmann-json3-dev"),
        ("/usr/include/openssl/evp.h", "libssl-dev"),
    ):
        if not Path(header).is_file():
            return f"needs {package} (apt-get install {package})"
    return None


@pytest.fixture(scope="module")
def native_build() -> Path:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    cmd = [
        "cmake",
        "-S",
        str(ROOT),
        "-B",
        str(BUILD),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython3_EXECUTABLE={sys.executable}",
    ]
    if shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    configure = subprocess.run(cmd, capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compiled = subprocess.run(["cmake", "--build", str(BUILD), "-j2"], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout[-4000:] + compiled.stderr[-4000:]
    return BUILD


def test_native_ctest_suite(native_build: Path) -> None:
    run = subprocess.run(
        ["ctest", "--output-on-failure", "-j2", "-E", "^native_(noise|tokenizer)"],
        cwd=native_build,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "tests passed" in run.stdout


def test_native_cli_reports_its_backends(native_build: Path) -> None:
    cli = native_build / "runtime" / "native" / "gligen-rt-native"
    out = subprocess.run([str(cli), "backends"], capture_output=True, text=True, check=True).stdout
    assert "openvino" in out.split(",")[0]
    bad = subprocess.run([str(cli), "generate"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
