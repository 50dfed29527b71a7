"""Triton Python-backend (BLS) model: GLIGEN's whole request loop, written by `gligen-rt triton-repo`.

Each instance opens the engine folder copied beside this file (`engines/`) with GligenPipeline.
With ENGINE_MODELS "none" it runs the engines in-process on BACKEND (ort-cpu, tensorrt, ...); else
every engine call is a BLS request to the repository's engine models (`<prefix>_<engine>`), which
Triton schedules, batches and places by their own instance groups. The tokenizer, grounding
inputs, schedulers and the loop are ours either way, so images equal `gligen-rt generate`'s.

Input REQUEST (BYTES, [1]): the request JSON of `gligen-rt serve` (images as base64).
Outputs IMAGES (UINT8, [N, H, W, 3]), SEED (INT64, [1]), TIMINGS (BYTES, [1], JSON seconds).
A bad request fails alone with the server's one-line message; the model keeps serving.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import tempfile
import uuid
from pathlib import Path

import numpy as np

# Triton's python stub starts with its own sys.path: add the environment gligen-rt runs in.
for _path in os.environ.get("GLIGEN_RT_PYTHON_SITE", "").split(os.pathsep):
    if _path:
        site.addsitedir(_path)

import triton_python_backend_utils as pb_utils  # noqa: E402  (provided by the Python backend)


def _param(args: dict, name: str, default: str) -> str:
    params = json.loads(args["model_config"]).get("parameters", {})
    return params.get(name, {}).get("string_value", default) or default


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        for path in _param(args, "PYTHON_SITE", "").split(os.pathsep):
            if path:
                site.addsitedir(path)
        if args.get("model_instance_kind") == "GPU":  # one stub process per instance: pin its GPU
            os.environ["CUDA_VISIBLE_DEVICES"] = str(args["model_instance_device_id"])
        from gligen_rt.runtime.folder import EngineFolder
        from gligen_rt.runtime.pipeline import GligenPipeline

        folder_path = Path(args["model_repository"]) / args["model_version"] / "engines"
        engine_models = _param(args, "ENGINE_MODELS", "none")
        single = _param(args, "SINGLE_UNET", "false") == "true"
        if engine_models == "none":
            self.pipe = GligenPipeline.from_engines(
                folder_path, _param(args, "BACKEND", "ort-cpu"), single_unet=single, check_sha256=False
            )
        else:
            folder = EngineFolder.open(folder_path, check_sha256=False)
            prefix = _param(args, "ENGINE_PREFIX", "gligen")
            self.pipe = GligenPipeline(folder, _bls_backend(prefix), single_unet=single)
        self.tmp = Path(tempfile.gettempdir())

    def execute(self, requests: list) -> list:
        from gligen_rt.core.errors import GligenError
        from gligen_rt.serve.payload import Workdir, parse_json

        responses = []
        for request in requests:
            work = Workdir(self.tmp / f"gligen-triton-{uuid.uuid4().hex}")
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "REQUEST").as_numpy().reshape(-1)[0]
                req = parse_json(raw if isinstance(raw, bytes) else str(raw).encode(), work)
                self.pipe.check_request(req)
                result = self.pipe(req)
                outputs = [
                    pb_utils.Tensor("IMAGES", np.ascontiguousarray(result.images)),
                    pb_utils.Tensor("SEED", np.array([req.seed], dtype=np.int64)),
                    pb_utils.Tensor(
                        "TIMINGS", np.array([json.dumps(result.timings).encode()], dtype=np.object_)
                    ),
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except GligenError as e:  # the request's fault: 400 where the backend can say so
                responses.append(pb_utils.InferenceResponse(error=_error(str(e), invalid_argument=True)))
            except Exception as e:  # never take the model down for one request
                message = f"internal error ({type(e).__name__}: {e})"
                responses.append(pb_utils.InferenceResponse(error=_error(message)))
            finally:
                shutil.rmtree(work.path, ignore_errors=True)
        return responses

    def finalize(self) -> None:
        self.pipe.close()


def _error(message: str, invalid_argument: bool = False):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid_argument else None
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def _bls_backend(prefix: str):
    """A runtime Backend whose engines are the repository's engine models, called through BLS."""
    from gligen_rt.core.errors import EngineError
    from gligen_rt.runtime.backend import Backend

    class BlsBackend(Backend):
        name = "triton-bls"

        def load(self, folder, engines) -> None:
            self.specs = {e: folder.specs[e] for e in engines}

        def run(self, engine: str, inputs: dict) -> dict:
            self._check_loaded(engine)
            spec = self.specs[engine]
            tensors = [pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in inputs.items()]
            response = pb_utils.InferenceRequest(
                model_name=f"{prefix}_{engine}",
                requested_output_names=list(spec.output_names),
                inputs=tensors,
            ).exec()
            if response.has_error():
                raise EngineError(f"engine model {prefix}_{engine} failed: {response.error().message()}")
            return {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in spec.output_names}

        def close(self) -> None:
            self.specs = {}

    return BlsBackend()
