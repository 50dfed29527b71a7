#!/usr/bin/env bash
# A Triton Inference Server for trying `gligen-rt triton-repo` on this machine: the tritonserver
# binary and Python backend shipped in the nvidia-pytriton wheel, in an environment of its own
# (its metadata pins numpy<2; ours has numpy 2). tests/test_triton.py uses it when present.
#
#   bash scripts/triton_env.sh [ENV_DIR]     (default: $GLIGEN_RT_TRITON_ENV or ~/.cache/gligen-rt-triton)
#
# The Python backend's stub embeds the Python found as `python3` on PATH when tritonserver starts
# (start it outside a virtualenv); its pybind11 needs numpy<2 in that Python, hence python3-numpy.
set -euo pipefail
ENV_DIR="${1:-${GLIGEN_RT_TRITON_ENV:-$HOME/.cache/gligen-rt-triton}}"
if ! /usr/bin/python3 -c "import numpy" >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-numpy >/dev/null
fi
if [ ! -d "$ENV_DIR/venv" ]; then
    python3 -m venv "$ENV_DIR/venv"
    "$ENV_DIR/venv/bin/pip" install -q "nvidia-pytriton==0.7.0"
fi
echo "$ENV_DIR"
