"""Triton Python-backend model running one exported engine (model.onnx beside this file) on ONNX
Runtime: for a Triton without the onnxruntime backend (e.g. the Python-backend-only server of the
`nvidia-pytriton` wheel). Written by `gligen-rt triton-repo --engine-models python`."""

from __future__ import annotations

import json
import os
import site
from pathlib import Path

for _path in os.environ.get("GLIGEN_RT_PYTHON_SITE", "").split(os.pathsep):
    if _path:
        site.addsitedir(_path)

import triton_python_backend_utils as pb_utils  # noqa: E402  (provided by the Python backend)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        for path in (
            config.get("parameters", {}).get("PYTHON_SITE", {}).get("string_value", "").split(os.pathsep)
        ):
            if path:
                site.addsitedir(path)
        import onnxruntime as ort

        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            tensors = {n: pb_utils.get_input_tensor_by_name(request, n) for n in self.inputs}
            feeds = {n: t.as_numpy() for n, t in tensors.items() if t is not None}
            try:
                values = self.session.run(self.outputs, feeds)
            except Exception as e:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
                continue
            outs = [pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values)]
            responses.append(pb_utils.InferenceResponse(output_tensors=outs))
        return responses
