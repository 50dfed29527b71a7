"""The native tokenizer and noise (runtime/native: library gligen_bits) against the Python runtime.

Builds only gligen_bits and its two test programs with CMake into a temporary folder, then runs the
Python reference generators, which compare bit for bit / token for token:
- noise: numpy Generator(PCG64(seed)).standard_normal(dtype=float32), 7 seeds x 10^6 draws;
- tokenizer: gligen_rt.core.tokenizer.ClipTokenizer on 12,000 generated prompts (hundreds of them
  mojibake that ftfy repairs).
Skips with the reason where cmake, a C++ compiler or nlohmann-json is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "runtime" / "native"
TESTS = NATIVE / "tests"
SKIP_RC = 77

SCRATCH_CMAKE = """cmake_minimum_required(VERSION 3.20)
project(gligen_bits_only LANGUAGES CXX)
set(CMAKE_CXX_STANDARD 17)
enable_testing()
include({native}/src/bits.cmake)
include({native}/tests/bits_tests.cmake)
"""


@pytest.fixture(scope="module")
def bits_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cmake = shutil.which("cmake")
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cmake is None or cxx is None:
        pytest.skip(f"needs cmake and a C++17 compiler (cmake: {cmake}, c++: {cxx})")
    tmp = tmp_path_factory.mktemp("native_bits")
    src, build = tmp / "src", tmp / "build"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(SCRATCH_CMAKE.format(native=NATIVE.as_posix()))
    configure = subprocess.run(
        [
            cmake,
            "-S",
            str(src),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython3_EXECUTABLE={sys.executable}",
        ],
        capture_output=True,
        text=True,
    )
    if configure.returncode != 0 and "nlohmann_json" in configure.stdout + configure.stderr:
        pytest.skip("nlohmann-json is not installed (apt-get install nlohmann-json3-dev)")
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compiled = subprocess.run([cmake, "--build", str(build), "-j2"], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return build


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_noise_equals_numpy_float32_draws_bit_for_bit(bits_build: Path) -> None:
    run = _run([str(TESTS / "gen_noise_reference.py"), "--check", str(bits_build / "gligen_noise_test")])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "noise: 7 seeds, 7000000 draws, 0 mismatches" in run.stdout, run.stdout


def test_tokenizer_equals_python_on_12000_prompts(bits_build: Path) -> None:
    run = _run(
        [str(TESTS / "gen_tokenizer_reference.py"), "--check", str(bits_build / "gligen_tokenizer_test")]
    )
    if run.returncode == SKIP_RC:
        pytest.skip(run.stderr.strip())
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    m = re.search(r"tokenizer: (\d+) prompts \(\d+ past 77 tokens\), (\d+) mismatches", run.stdout)
    assert m, run.stdout[-2000:]
    assert int(m.group(1)) >= 10000 and int(m.group(2)) == 0, run.stdout[-2000:]
    repaired = re.search(r"\((\d+) changed by ftfy's mojibake repair\)", run.stdout)
    assert repaired and int(repaired.group(1)) >= 300, run.stdout[-2000:]


def test_tokenizer_folder_without_vocabulary_is_one_line_error(bits_build: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer").mkdir()
    run = subprocess.run(
        [str(bits_build / "gligen_tokenizer_test"), str(tmp_path)], capture_output=True, text=True
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "vocab.json + merges.txt" in lines[0], run.stderr
