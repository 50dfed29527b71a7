#!/usr/bin/env bash
# Build the native runtime (library gligen_rt, CLI gligen-rt-native) and run its ctest suite.
#
#   scripts/native_build.sh            Release build in build/native, then ctest
#   scripts/native_build.sh --asan     AddressSanitizer + UBSan build in build/native-asan, then ctest
#                                      (a subset; NATIVE_ASAN_ALL=1 for every test)
#   NATIVE_NO_TEST=1 scripts/native_build.sh     build only
#
# Needs cmake, a C++17 compiler, libpng-dev, nlohmann-json3-dev, libicu-dev, libssl-dev (installed
# here with apt-get when missing and possible) and the project's Python environment (OpenVINO's
# C++ SDK comes from the openvino wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -f /usr/include/png.h ] || need+=(libpng-dev)
[ -d /usr/include/nlohmann ] || need+=(nlohmann-json3-dev)
[ -f /usr/include/unicode/uchar.h ] || need+=(libicu-dev)
[ -f /usr/include/openssl/evp.h ] || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null; }
  else
    echo "error: missing system packages ${need[*]}: apt-get install ${need[*]}" >&2
    exit 2
  fi
fi

# ONNX Runtime's headers (ort-cpu backend): fetched once; without them the backend is left out.
bash scripts/native_ort_headers.sh || echo "note: ONNX Runtime headers unavailable: building without the ort-cpu backend" >&2

dir=build/native
args=(-DCMAKE_BUILD_TYPE=Release)
if [ "${1:-}" = "--asan" ]; then
  dir=build/native-asan
  # -O1 -g1: the sanitizers' recommended optimization, line tables for their stack traces; compiles
  # in about half the time of RelWithDebInfo's -O2 -g.
  args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DGLIGEN_SANITIZE=ON
        "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG")
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
jobs=${NATIVE_JOBS:-2}
nice -n 10 cmake -S . -B "$dir" "${generator[@]}" "${args[@]}" -DPython3_EXECUTABLE="$(command -v python)" >/dev/null
nice -n 10 cmake --build "$dir" -j "$jobs"
# Under the sanitizers OpenVINO runs too: its TBB would dlopen its hwloc binding with RTLD_DEEPBIND,
# which AddressSanitizer refuses, so the tests set TBB_ENABLE_SANITIZERS=1 (tests/runtime.cmake).
# To keep CI time in bounds the sanitizer run takes one parity test per modality family (box/text,
# reference images, keypoints, condition map, semantic one-hot, inpainting) plus every non-parity
# test; canny, depth and normal take hed's and sem's code paths (they differ in table values only),
# inpaint-text-box is a part of inpaint-text-image-box, and every sampler's whole loop already runs
# sanitized in native_host_math_matches_python: the samplers' end-to-end test and those three run in
# Release only, and so does the OpenVINO builds' test (most of its time is Python and NNCF).
# Parity runs OpenVINO FP32 there (the Release run covers BF16, the IR builds and ORT).
# NATIVE_ASAN_ALL=1 runs the whole suite.
filter=()
if [ "${1:-}" = "--asan" ] && [ -z "${NATIVE_ASAN_ALL:-}" ]; then
  filter=(-E 'native_parity_(canny|depth|normal|inpaint-text-box|samplers|inpaint-feature-cache|built)$')
fi
if [ -z "${NATIVE_NO_TEST:-}" ]; then
  (cd "$dir" && nice -n 10 ctest --output-on-failure -j "$jobs" "${filter[@]}")
fi
