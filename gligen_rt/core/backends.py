"""Backend names: the one place that lists them (runtime, `build`, the CLI and benchmarks import it).

| name          | runs on | built by `gligen-rt build` | what it is                                  |
|---------------|---------|----------------------------|---------------------------------------------|
| ort-cpu       | CPU     | yes (optimized model)      | ONNX Runtime, CPU provider                  |
| ort-cuda      | GPU     | yes (optimized model)      | ONNX Runtime, CUDA provider, IO binding     |
| ort-trt       | GPU     | yes (EP engine caches)     | ONNX Runtime, TensorRT provider             |
| tensorrt      | GPU     | yes (plans, required)      | TensorRT 10 plans                           |
| tensorrt-rtx  | GPU     | yes (plans, required)      | TensorRT-RTX plans                          |
| openvino      | CPU     | yes (compiled blobs)       | OpenVINO, precision hint f32                |
| openvino-bf16 | CPU     | yes (IR, BF16)             | OpenVINO, BF16                              |
| openvino-int8 | CPU     | yes (IR, INT8 weights)     | OpenVINO, INT8 weights                      |
| openvino-int8a| CPU     | yes (IR, UNets W8A8)       | OpenVINO, INT8 activations in the UNets      |
| torch         | both    | no                         | the PyTorch reference (parity)              |
"""

from __future__ import annotations

# Every backend `generate --engines DIR --backend B` accepts, in the order the docs list them.
BACKENDS = (
    "ort-cpu",
    "ort-cuda",
    "ort-trt",
    "tensorrt",
    "tensorrt-rtx",
    "openvino",
    "openvino-bf16",
    "openvino-int8",
    "openvino-int8a",
    "torch",
)
# Backends whose artifacts `gligen-rt build` writes (DIR/<backend>/).
BUILD_BACKENDS = (
    "tensorrt",
    "tensorrt-rtx",
    "ort-cpu",
    "ort-cuda",
    "ort-trt",
    "openvino",
    "openvino-bf16",
    "openvino-int8",
    "openvino-int8a",
)
# Backends that run on an NVIDIA GPU and take `--device N` (CUDA device ordinal).
GPU_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt", "tensorrt-rtx")
# TensorRT backends and their Python modules.
TRT_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
