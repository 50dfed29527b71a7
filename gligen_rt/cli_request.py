"""`generate`'s request flags: flags (and a JSON file) -> GenerationRequest, the output files it
will write, and the short summary printed at the start.

Torch-free: everything here runs before any model is loaded, so a bad request or output name is
refused in a fraction of a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
from pathlib import Path

from gligen_rt.core.errors import RequestError
from gligen_rt.core.modality import NUM_KEYPOINTS
from gligen_rt.core.request import SAMPLERS, GenerationRequest, GroundedObject, Person

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationRequest)}


def floats(text: str, n: int, what: str) -> tuple[float, ...]:
    """ "a,b,c" -> n finite floats; RequestError (one line) otherwise."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise RequestError(f"{what} {text!r} is not {n} comma-separated numbers") from None
    if len(values) != n:
        raise RequestError(f"{what} {text!r} has {len(values)} numbers, expected {n}")
    if not all(math.isfinite(v) for v in values):
        raise RequestError(f"{what} {text!r} contains NaN or Inf: give finite numbers")
    return values


def keypoints(text: str) -> Person:
    """One person from `--keypoints`: 17 "x,y" pairs in COCO order separated by spaces or ';',
    "-" for a missing keypoint."""
    parts = [p for p in re.split(r"[\s;]+", text.strip()) if p]
    if len(parts) != NUM_KEYPOINTS:
        raise RequestError(
            f"--keypoints has {len(parts)} entries: give {NUM_KEYPOINTS} x,y pairs in COCO order "
            "separated by spaces, '-' for a missing one"
        )
    return Person(tuple(None if p == "-" else floats(p, 2, "--keypoints point") for p in parts))  # type: ignore[misc]


def add_request_args(p: argparse.ArgumentParser) -> None:
    """The request flags of `generate` (every backend). Unset flags keep the JSON file's value, else
    the request's default (shown in --help)."""
    from gligen_rt.runtime.tiny import TRAINED_TINY_GUIDANCE

    d = _DEFAULTS
    g = p.add_argument_group("request (flags override --request's fields)")
    g.add_argument("--request", type=Path, help="JSON request file (any modality; see README)")
    g.add_argument("--prompt", help="the caption")
    g.add_argument("--negative-prompt", default=None, help="what to avoid (default: empty)")
    g.add_argument(
        "--phrase", action="append", default=[], help="grounded phrase (repeat; one per --box, in order)"
    )
    g.add_argument("--box", action="append", default=[], help="x0,y0,x1,y1 in [0,1] of the image (repeat)")
    g.add_argument(
        "--image", action="append", default=[], help="reference image per box (text-image-box models)"
    )
    g.add_argument(
        "--keypoints",
        action="append",
        default=[],
        metavar='"x,y x,y ..."',
        help=f"one person for keypoint models (repeat per person): {NUM_KEYPOINTS} x,y pairs in COCO "
        "order (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles; left first), "
        "'-' for a missing one",
    )
    g.add_argument("--style-image", default=None, help="style reference image (text-image-box models)")
    g.add_argument(
        "--condition", default=None, help="condition map (hed/canny/depth/normal image, sem label map)"
    )
    g.add_argument("--inpaint-image", default=None, help="image to inpaint (inpainting models)")
    g.add_argument("--seed", type=int, default=None, help=f"noise seed (default: {d['seed']})")
    g.add_argument("--steps", type=int, default=None, help=f"denoising steps (default: {d['steps']})")
    g.add_argument(
        "--guidance",
        type=float,
        default=None,
        help=f"classifier-free guidance (default: {d['guidance']}); --model tiny: {TRAINED_TINY_GUIDANCE:g}, "
        "the scale its card measured best",
    )
    g.add_argument(
        "--sampler", choices=list(SAMPLERS), default=None, help=f"sampler (default: {d['sampler']})"
    )
    sched = g.add_mutually_exclusive_group()
    sched.add_argument(
        "--beta",
        type=float,
        default=None,
        help="fraction of steps with grounding, diffusers' form (default: the modality's alpha_type)",
    )
    sched.add_argument(
        "--alpha-type",
        default=None,
        help="a,b,c: grounded, decaying, plain fractions, the original's form (default: per modality)",
    )
    g.add_argument(
        "--height", type=int, default=None, help="image height, multiple of 64 (default: the model's size)"
    )
    g.add_argument(
        "--width", type=int, default=None, help="image width, multiple of 64 (default: the model's size)"
    )
    g.add_argument(
        "--num-images",
        type=int,
        default=None,
        help=f"images per request (default: {d['num_images']}); more than one writes OUT_0.png, OUT_1.png, ...",
    )
    g.add_argument(
        "--feature-cache",
        type=int,
        default=None,
        metavar="K",
        help="reuse the deep UNet features on the plain steps: the whole UNet every K-th plain step, its "
        "first and last levels between (engines exported with --feature-cache; default: off)",
    )
    g.add_argument(
        "--feature-cache-grounded",
        type=int,
        default=None,
        metavar="K",
        help="the same on the grounded steps: the whole grounded UNet every K-th, its first and last "
        "levels with their fusers between (engines exported with --feature-cache; default: off)",
    )


_SCALARS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "sampler",
    "beta",
    "height",
    "width",
    "num_images",
    "feature_cache",
    "feature_cache_grounded",
    "condition",
    "inpaint_image",
    "style_image",
)


def request_from_args(args: argparse.Namespace, guidance: float | None = None) -> GenerationRequest:
    """Flags (and an optional JSON file) -> one GenerationRequest (validated later, against the model).

    guidance: the model's own default scale, used where neither --guidance nor the JSON file gives one
    (None: the request's default)."""
    from gligen_rt.core.request import request_from_json

    base = request_from_json(args.request) if args.request else None
    if base is None and args.prompt is None:
        raise RequestError('give --prompt "..." or --request FILE.json')
    changes: dict = {k: getattr(args, k) for k in _SCALARS if getattr(args, k) is not None}
    if guidance is not None and "guidance" not in changes and not _json_has(args.request, "guidance"):
        changes["guidance"] = guidance
    if args.alpha_type is not None:
        changes["alpha_type"] = floats(args.alpha_type, 3, "--alpha-type")
    if args.box or args.phrase or args.image:
        n = len(args.box)
        if args.phrase and len(args.phrase) != n:
            raise RequestError(f"{len(args.phrase)} --phrase for {n} --box: give one phrase per box")
        if args.image and len(args.image) != n:
            raise RequestError(f"{len(args.image)} --image for {n} --box: give one image per box")
        if n == 0:
            raise RequestError("--phrase/--image given without --box: give one --box x0,y0,x1,y1 per object")
        changes["objects"] = tuple(
            GroundedObject(
                box=floats(b, 4, "--box"),  # type: ignore[arg-type]
                phrase=args.phrase[i] if args.phrase else None,
                image=args.image[i] if args.image else None,
            )
            for i, b in enumerate(args.box)
        )
    if args.keypoints:
        changes["persons"] = tuple(keypoints(k) for k in args.keypoints)
    if base is None:
        return GenerationRequest(**changes)
    return dataclasses.replace(base, **changes)


def _json_has(path: str | os.PathLike[str] | None, key: str) -> bool:
    """Whether the request file (already parsed once, so valid JSON) sets ``key``."""
    if not path:
        return False
    with open(path, encoding="utf-8") as f:
        return key in json.load(f)


def input_files(request: GenerationRequest, request_file: str | os.PathLike[str] | None) -> list[str]:
    """Every file the request reads (maps, images, the JSON file itself)."""
    files = [request.condition, request.inpaint_image, request.style_image]
    files += [o.image for o in request.objects]
    files.append(os.fspath(request_file) if request_file is not None else None)
    return [f for f in files if f]


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def planned_outputs(
    out: str | os.PathLike[str], request: GenerationRequest, overlay: bool, request_file: Path | None = None
) -> list[str]:
    """The files `generate` will write, checked before any work: a known image extension, and never one
    of the request's own inputs (the image nor its _overlay twin). RequestError (one line) otherwise."""
    from gligen_rt.core.imageio import image_format, output_paths, overlay_path

    image_format(out)
    n = request.num_images if isinstance(request.num_images, int) and request.num_images > 0 else 1
    paths = output_paths(out, n)
    if overlay:
        paths += [overlay_path(p) for p in paths]
    for path in paths:
        for source in input_files(request, request_file):
            if _same_file(path, source):
                flag = "--out" if path in output_paths(out, n) else "--out (its _overlay twin)"
                raise RequestError(
                    f"{flag} would overwrite the input {source!r} with the result: choose another output name"
                )
    return paths


def summary(request: GenerationRequest) -> str:
    """One short human line for the start of a run (the full request is printed only with -v)."""
    parts = [repr(request.prompt)]
    if request.objects:
        objs = [
            f"{o.phrase or os.path.basename(o.image or '') or 'object'} @ "
            + ",".join(f"{v:g}" for v in o.box)
            for o in request.objects
        ]
        parts.append(f"{len(objs)} object{'s' if len(objs) > 1 else ''} ({'; '.join(objs)})")
    if request.persons:
        parts.append(f"{len(request.persons)} person{'s' if len(request.persons) > 1 else ''}")
    for name in ("condition", "inpaint_image", "style_image"):
        value = getattr(request, name)
        if value:
            parts.append(f"{name.replace('_', ' ')} {os.path.basename(value)}")
    size = (
        f"{request.height or 'model'}x{request.width or 'model'}" if request.height or request.width else ""
    )
    sched = (
        f", beta {request.beta:g}"
        if request.beta is not None
        else (f", alpha_type {','.join(f'{v:g}' for v in request.alpha_type)}" if request.alpha_type else "")
    )
    parts.append(
        f"seed {request.seed}, {request.steps} {request.sampler} steps, guidance {request.guidance:g}{sched}"
        + (f", {size}" if size else "")
        + (f", {request.num_images} images" if request.num_images != 1 else "")
        + (f", feature cache every {request.feature_cache}" if request.feature_cache >= 2 else "")
        + (
            f", grounded feature cache every {request.feature_cache_grounded}"
            if request.feature_cache_grounded >= 2
            else ""
        )
    )
    return "; ".join(parts)
