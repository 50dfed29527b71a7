#!/usr/bin/env bash
# Build the native runtime (library gligen_rt, CLI gligen-rt-native) and run its ctest suite.
#
#   scripts/native_build.sh            Release build in build/native, then ctest
#   scripts/native_build.sh --asan     AddressSanitizer + UBSan build in build/native-asan, then ctest
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
  args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DGLIGEN_SANITIZE=ON)
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
jobs=${NATIVE_JOBS:-2}
nice -n 10 cmake -S . -B "$dir" "${generator[@]}" "${args[@]}" -DPython3_EXECUTABLE="$(command -v python)" >/dev/null
nice -n 10 cmake --build "$dir" -j "$jobs"
# Under AddressSanitizer, OpenVINO cannot load: it dlopens its TBB binding with RTLD_DEEPBIND,
# which ASan refuses (the process aborts). The sanitizer run therefore covers the tests that run
# no OpenVINO inference (noise, tokenizer, host arithmetic, engine-folder checks); the Release run
# covers the rest.
filter=()
[ "${1:-}" = "--asan" ] && filter=(-R 'native_(noise|tokenizer|host_math|engine_folders)')
if [ -z "${NATIVE_NO_TEST:-}" ]; then
  (cd "$dir" && nice -n 10 ctest --output-on-failure -j "$jobs" "${filter[@]}")
fi
