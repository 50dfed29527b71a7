#!/usr/bin/env bash
# Installs gligen-rt with everything the tests and the CPU paths need, into the active Python.
# torch is pinned to the CPU build (a looser pin pulls several GB of CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[export,ort,openvino,trt-rtx,bench,serve,dev]"
# CLIP's BPE vocabulary for original-format checkpoints (which ship no tokenizer) comes from this
# package's data file. Its code needs torchvision, which we never import, hence --no-deps.
python -m pip install -q --no-deps "clip-anytorch==2.6.0"
