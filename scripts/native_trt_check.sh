#!/usr/bin/env bash
# Compile-check the native TensorRT backend where TensorRT is not installed (no libnvinfer, no GPU):
# a syntax and type check of runtime/native/src/backend_tensorrt.cc and backend.cc against
# TensorRT's public headers and the CUDA runtime headers. Nothing is linked or run.
#
#   scripts/native_trt_check.sh HEADER_DIR [CUDA_INCLUDE_DIR]
#
# HEADER_DIR holds NvInfer.h (e.g. the include/ folder of NVIDIA's open-source TensorRT repository,
# github.com/NVIDIA/TensorRT, at a release tag). CUDA_INCLUDE_DIR holds cuda_runtime_api.h (default:
# $CUDA_HOME/include, else the newest /usr/local/cuda*/include).
# Checked so far: TensorRT headers 11.1.0 (main, July 2026), 10.16.0, 10.0.1 and 8.6.1 with CUDA 13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
hdr=${1:-}
if [ -z "$hdr" ] || [ ! -f "$hdr/NvInfer.h" ]; then
  echo "error: no NvInfer.h in '${hdr}': pass the folder holding TensorRT's headers (scripts/native_trt_check.sh HEADER_DIR)" >&2
  exit 2
fi
cuda=${2:-}
if [ -z "$cuda" ]; then
  if [ -n "${CUDA_HOME:-}" ]; then
    cuda=$CUDA_HOME/include
  else
    cuda=$(ls -d /usr/local/cuda*/include 2>/dev/null | sort -V | tail -n 1 || true)
  fi
fi
if [ -z "$cuda" ] || [ ! -f "$cuda/cuda_runtime_api.h" ]; then
  echo "error: no cuda_runtime_api.h in '${cuda}': install the CUDA toolkit headers or pass their folder as the second argument" >&2
  exit 2
fi
version=$(grep -hE '^#define (TRT_(MAJOR|MINOR|PATCH)_ENTERPRISE|NV_TENSORRT_(MAJOR|MINOR|PATCH)) [0-9]+' "$hdr/NvInferVersion.h" |
  awk '{print $3}' | head -n 3 | paste -sd.)
cxx=${CXX:-g++}
nice -n 10 "$cxx" -std=c++17 -fsyntax-only -Wall -Wextra -Werror -DGLIGEN_WITH_TENSORRT=1 \
  -I runtime/native/src -I runtime/native/include -isystem "$hdr" -isystem "$cuda" \
  runtime/native/src/backend_tensorrt.cc runtime/native/src/backend.cc
echo "TensorRT backend compiles against TensorRT headers ${version:-?} ($hdr) and CUDA headers in $cuda"
