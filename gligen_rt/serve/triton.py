"""`gligen-rt triton-repo ENGINES OUT`: a Triton Inference Server model repository for an engine folder.

    OUT/gligen/config.pbtxt            Python backend (BLS): REQUEST (JSON) -> IMAGES, SEED, TIMINGS
    OUT/gligen/1/model.py              our loop (gligen_rt/serve/triton_models/gligen.py)
    OUT/gligen/1/engines/              the engine folder (hard links where possible)
    OUT/gligen_<engine>/config.pbtxt   one model per engine (--engine-models onnxruntime | tensorrt | python)
    OUT/gligen_<engine>/1/model.onnx | model.plan | model.py
    OUT/README.md                      how to run it, on one or N GPUs

Engine models are Triton's own onnxruntime_onnx / tensorrt_plan models where the server has those
backends; `python` wraps ONNX Runtime in the Python backend for servers that have only that one;
`none` runs the engines inside the BLS model on --backend. Tensor names, types and dims (-1 for
symbolic ones) come from each engine's spec (engines/spec.py). Everything is written into a
temporary folder that is renamed to OUT when complete.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sysconfig
from importlib import resources
from pathlib import Path
from typing import Any

from gligen_rt.core.errors import EngineError, RequestError

ENGINE_MODELS = ("none", "onnxruntime", "tensorrt", "python")
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int32": "TYPE_INT32", "int64": "TYPE_INT64"}
TEMPLATES = resources.files("gligen_rt.serve") / "triton_models"


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        if path.is_file():
            _link_or_copy(path, dst / path.relative_to(src))


def _dims(dims: tuple[Any, ...]) -> str:
    return "[ " + ", ".join(str(d) if isinstance(d, int) else "-1" for d in dims) + " ]"


def _tensor(kind: str, name: str, dtype: str, dims: str) -> str:
    return f"{kind} [\n  {{ name: {name!r}, data_type: {dtype}, dims: {dims} }}\n]".replace("'", '"')


def _instance_group(count: int, kind: str, gpus: list[int] | None) -> str:
    gpu = f", gpus: [ {', '.join(map(str, gpus))} ]" if gpus else ""
    return f"instance_group [\n  {{ count: {count}, kind: {kind}{gpu} }}\n]"


def _params(params: dict[str, str]) -> str:
    return "\n".join(
        f'parameters: {{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    )


def engine_config(name: str, spec: Any, platform: str, count: int, kind: str, gpus: list[int] | None) -> str:
    """config.pbtxt of one engine model (explicit batch dims: max_batch_size 0)."""
    lines = [f'name: "{name}"']
    lines.append('backend: "python"' if platform == "python" else f'platform: "{platform}"')
    lines.append("max_batch_size: 0")
    for kind_name, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        entries = ",\n".join(
            f'  {{ name: "{t.name}", data_type: {TRITON_DTYPES[t.dtype]}, dims: {_dims(t.dims)} }}'
            for t in tensors
        )
        lines.append(f"{kind_name} [\n{entries}\n]")
    lines.append(_instance_group(count, kind, gpus))
    return "\n".join(lines) + "\n"


def gligen_config(name: str, count: int, kind: str, gpus: list[int] | None, params: dict[str, str]) -> str:
    """config.pbtxt of the BLS model: the request schema (JSON in, images out)."""
    return (
        "\n".join(
            [
                f'name: "{name}"',
                'backend: "python"',
                "max_batch_size: 0",
                "# REQUEST: the request JSON of `gligen-rt serve` (images as base64), one string.",
                _tensor("input", "REQUEST", "TYPE_STRING", "[ 1 ]"),
                "# IMAGES: (N, H, W, 3) uint8; SEED: the seed used; TIMINGS: JSON seconds per stage.",
                "output [\n"
                '  { name: "IMAGES", data_type: TYPE_UINT8, dims: [ -1, -1, -1, 3 ] },\n'
                '  { name: "SEED", data_type: TYPE_INT64, dims: [ 1 ] },\n'
                '  { name: "TIMINGS", data_type: TYPE_STRING, dims: [ 1 ] }\n'
                "]",
                _instance_group(count, kind, gpus),
                _params(params),
            ]
        )
        + "\n"
    )


README = """# GLIGEN on Triton Inference Server

Written by `gligen-rt {argv}`.

Models: `{name}` (Python backend, BLS) runs gligen-rt's request loop; {engines_line}

Request (`POST /v2/models/{name}/infer`, KServe v2 JSON):

    {{"inputs": [{{"name": "REQUEST", "shape": [1], "datatype": "BYTES",
                  "data": ["{{\\"prompt\\": \\"a room\\", \\"objects\\": [{{\\"phrase\\": \\"a cat\\", \\"box\\": [0.1, 0.2, 0.5, 0.6]}}], \\"seed\\": 1}}"]}}]}}

The REQUEST string is the JSON of `gligen-rt serve` (images as base64). Outputs: IMAGES (N, H, W, 3)
uint8, SEED, TIMINGS (JSON). A bad request fails alone with the one-line message of the CLI.

## Run

The Python backend's stub process must import gligen-rt: the models add the site-packages folders
of their `PYTHON_SITE` parameter (set to the environment that wrote this repository) and of
`$GLIGEN_RT_PYTHON_SITE`; the stub's Python must be the same minor version as that environment.

    tritonserver --model-repository {out}

Serving one model on N GPUs: `instance_group [ {{ count: 1, kind: KIND_GPU }} ]` (the default written
with `--kind KIND_GPU`) starts one instance on every visible GPU; `gpus: [0, 1]` restricts it, and
`count` sets instances per GPU (written with `--instances`, `--gpus`). Each BLS instance is its own
process pinned to its GPU. With engine models, the BLS instances (host work: tokenizer, scheduler)
and the engine instances (device work) scale separately: raise the UNet's count first. Behind a
load balancer, several servers with the same repository scale out further.
"""


def write_repository(
    engines: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    backend: str = "ort-cpu",
    engine_models: str = "none",
    instances: int = 1,
    kind: str = "KIND_CPU",
    gpus: list[int] | None = None,
    name: str = "gligen",
    python_site: list[str] | None = None,
    single_unet: bool = False,
    argv: str = "triton-repo",
) -> Path:
    """Write the model repository for the engine folder `engines` into `out` (which must not exist)."""
    from gligen_rt.runtime.folder import EngineFolder

    engines, out = Path(engines), Path(out)
    if engine_models not in ENGINE_MODELS:
        raise RequestError(f"--engine-models {engine_models!r}: choose one of {', '.join(ENGINE_MODELS)}")
    if kind not in ("KIND_CPU", "KIND_GPU"):
        raise RequestError(f"--kind {kind!r}: choose KIND_CPU or KIND_GPU")
    if instances < 1:
        raise RequestError(f"--instances {instances} must be 1 or more")
    if out.exists():
        raise RequestError(f"{out} exists: choose a new folder (nothing is overwritten)")
    folder = EngineFolder.open(engines, check_sha256=False)
    names = [e for e in folder.specs if not (single_unet and e == "unet_plain")]
    plans = {}
    if engine_models == "tensorrt":
        for e in names:
            plan = engines / "tensorrt" / f"{e}.plan"
            if not plan.is_file():
                raise EngineError(
                    f"{plan} is missing: build the plans first (`gligen-rt build --onnx {engines} --backend tensorrt`)"
                )
            plans[e] = plan
    site = python_site if python_site is not None else [sysconfig.get_paths()["purelib"]]

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model = tmp / name
        (model / "1").mkdir(parents=True)
        (model / "1" / "model.py").write_text((TEMPLATES / "gligen.py").read_text())
        _copy_tree(engines, model / "1" / "engines")
        params = {
            "BACKEND": backend,
            "ENGINE_MODELS": engine_models,
            "ENGINE_PREFIX": name,
            "SINGLE_UNET": "true" if single_unet else "false",
            "PYTHON_SITE": os.pathsep.join(site),
        }
        (model / "config.pbtxt").write_text(gligen_config(name, instances, kind, gpus, params))
        if engine_models != "none":
            platform = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan", "python": "python"}
            for e in names:
                em = tmp / f"{name}_{e}"
                (em / "1").mkdir(parents=True)
                if engine_models == "tensorrt":
                    _link_or_copy(plans[e], em / "1" / "model.plan")
                else:
                    _link_or_copy(engines / f"{e}.onnx", em / "1" / "model.onnx")
                    data = engines / f"{e}.onnx.data"
                    if data.is_file():
                        _link_or_copy(data, em / "1" / data.name)
                if engine_models == "python":
                    (em / "1" / "model.py").write_text((TEMPLATES / "engine.py").read_text())
                cfg = engine_config(
                    f"{name}_{e}", folder.specs[e], platform[engine_models], instances, kind, gpus
                )
                if engine_models == "python":
                    cfg += _params({"PYTHON_SITE": os.pathsep.join(site)}) + "\n"
                (em / "config.pbtxt").write_text(cfg)
        engines_line = (
            "the engines run inside it on `" + backend + "`."
            if engine_models == "none"
            else f"the engines are the models `{name}_<engine>` ({engine_models}), called through BLS."
        )
        (tmp / "README.md").write_text(
            README.format(argv=argv, name=name, engines_line=engines_line, out=out.name)
        )
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def cmd_triton_repo(args: argparse.Namespace) -> int:
    gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else None
    out = write_repository(
        args.engines,
        args.out,
        backend=args.backend,
        engine_models=args.engine_models,
        instances=args.instances,
        kind=args.kind,
        gpus=gpus,
        name=args.name,
        python_site=args.python_site,
        single_unet=args.single_unet,
        argv=" ".join(["triton-repo", *getattr(args, "argv", [])[1:]]),
    )
    print(out)
    return 0


def register(subparsers: Any) -> None:
    """Add `gligen-rt triton-repo ENGINES OUT`."""
    p = subparsers.add_parser("triton-repo", help="write a Triton Inference Server model repository")
    p.add_argument("engines", type=Path, help="engine folder (from `gligen-rt export`)")
    p.add_argument("out", type=Path, help="the repository folder to create")
    p.add_argument(
        "--engine-models",
        default="none",
        choices=ENGINE_MODELS,
        help="engines as Triton models (onnxruntime, tensorrt: built plans; python: ONNX Runtime in the "
        "Python backend) or none: inside the BLS model on --backend (default: %(default)s)",
    )
    p.add_argument("--backend", default="ort-cpu", help="in-process backend with --engine-models none")
    p.add_argument("--instances", type=int, default=1, help="instances per device (default: %(default)s)")
    p.add_argument("--kind", default="KIND_CPU", choices=["KIND_CPU", "KIND_GPU"])
    p.add_argument("--gpus", default=None, help="comma-separated GPU ids (default: every visible GPU)")
    p.add_argument("--name", default="gligen", help="the BLS model's name and engine models' prefix")
    p.add_argument("--single-unet", action="store_true", help="leave unet_plain out")
    p.add_argument(
        "--python-site",
        action="append",
        default=None,
        help="site-packages the models add to the stub's path (default: this environment's)",
    )
    p.set_defaults(func=cmd_triton_repo)
