"""Grounding accuracy (`gligen-rt eval`): the paper's layout measure in miniature, on every backend.

For N held-out layouts of the synthetic scene stream (gligen_ref/train/scenes.py, a seed the
training never saw) the model generates an image per layout; each requested object is then looked
for by its colour with a simple, documented detector:

1. every pixel takes the nearest colour of the palette (the six object colours and the grey floor)
   when it lies within ``MAX_DISTANCE`` of it in RGB, else none;
2. the pixels of the object's colour form connected components (4-neighbourhood,
   scipy.ndimage.label); the largest one, when it has at least ``MIN_PIXELS`` pixels, is the
   detection, and its bounding box the detected box.

Reported per backend and condition: ``ap50`` (share of objects whose detected box has IoU >= 0.5
with the requested box; an undetected object counts as a miss), ``mean_iou`` (0 for a miss),
``colour_acc`` (share of objects whose requested box is dominated by the requested colour among
the non-floor palette pixels inside it). Conditions: ``grounded``; ``grounding-off`` (the same
model and request with every fuser gate 0, i.e. the frozen base alone: beta = 0); ``shuffled``
(the boxes permuted between the objects of a layout, scored against the original boxes; layouts
with a single object cannot be shuffled and are left out of this row). ``--guidance`` takes several
scales for a sweep: one row per backend, condition and scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gligen_ref.train.scenes import COLOURS, FLOOR, Scene, iou, make_scene
from gligen_rt.core.errors import BackendUnavailable, GligenError
from gligen_rt.core.request import GenerationRequest, GroundedObject
from gligen_rt.runtime.tiny import TRAINED_TINY_GUIDANCE

MAX_DISTANCE = 90.0  # RGB distance within which a pixel counts as a palette colour
MIN_PIXELS = 12  # smallest component that counts as a detection
EVAL_SEED = 1  # the scene stream of the held-out layouts (training uses seed 0)
CONDITIONS = ("grounded", "grounding-off", "shuffled")
# openvino-int8 / openvino-int8a run the engine folder's builds (`gligen-rt build --backend ...`).
BACKENDS = (
    "torch",
    "ort-fp32",
    "ort-fp16",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
    "openvino-int8a",
    "tensorrt",
)

_NAMES = [*COLOURS, "floor"]
_PALETTE = np.array([*COLOURS.values(), FLOOR], dtype=np.float32)


def palette_labels(image: np.ndarray) -> np.ndarray:
    """(H, W) int: index into [*COLOURS, 'floor'] of each pixel's nearest palette colour, -1 when
    none lies within MAX_DISTANCE."""
    d = np.linalg.norm(image[:, :, None, :].astype(np.float32) - _PALETTE[None, None], axis=-1)
    labels = d.argmin(-1)
    labels[d.min(-1) > MAX_DISTANCE] = -1
    return labels


def detect(image: np.ndarray, colour: str, labels: np.ndarray | None = None) -> tuple[float, ...] | None:
    """The normalised box (x0, y0, x1, y1) of the largest connected region of ``colour``, or None."""
    from scipy import ndimage

    labels = palette_labels(image) if labels is None else labels
    mask = labels == _NAMES.index(colour)
    comp, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(comp.ravel())[1:]
    best = int(sizes.argmax())
    if sizes[best] < MIN_PIXELS:
        return None
    ys, xs = np.nonzero(comp == best + 1)
    h, w = mask.shape
    return (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)


def dominant_colour(labels: np.ndarray, box: Sequence[float]) -> str | None:
    """The most frequent non-floor palette colour inside ``box``, or None."""
    h, w = labels.shape
    x0, y0, x1, y1 = (int(round(v * s)) for v, s in zip(box, (w, h, w, h)))
    region = labels[y0:y1, x0:x1].ravel()
    region = region[(region >= 0) & (region < len(COLOURS))]
    if region.size == 0:
        return None
    return _NAMES[int(np.bincount(region).argmax())]


@dataclasses.dataclass
class ObjectScore:
    found: bool
    iou: float
    colour_ok: bool


def score(image: np.ndarray, scene: Scene) -> list[ObjectScore]:
    labels = palette_labels(image)
    out = []
    for o in scene.objects:
        box = detect(image, o.colour, labels)
        value = iou(box, o.box) if box is not None else 0.0
        out.append(ObjectScore(box is not None, value, dominant_colour(labels, o.box) == o.colour))
    return out


def summarise(scores: list[ObjectScore]) -> dict[str, float]:
    n = len(scores)
    return {
        "objects": n,
        "ap50": sum(s.iou >= 0.5 for s in scores) / n if n else float("nan"),
        "mean_iou": float(np.mean([s.iou for s in scores])) if n else float("nan"),
        "colour_acc": sum(s.colour_ok for s in scores) / n if n else float("nan"),
    }


def layouts(n: int, seed: int = EVAL_SEED) -> list[Scene]:
    return [make_scene(seed, i) for i in range(n)]


def shuffled_boxes(scene: Scene, index: int) -> tuple[tuple[float, ...], ...]:
    """The boxes rotated by one place (every object gets another object's box)."""
    boxes = [o.box for o in scene.objects]
    return tuple(boxes[1:] + boxes[:1])


def request_for(
    scene: Scene, condition: str, index: int, args: argparse.Namespace, guidance: float
) -> GenerationRequest:
    boxes = [o.box for o in scene.objects]
    if condition == "shuffled":
        boxes = list(shuffled_boxes(scene, index))
    objects = tuple(
        GroundedObject(box=tuple(b), phrase=o.phrase) for o, b in zip(scene.objects, boxes, strict=True)
    )
    return GenerationRequest(
        prompt=scene.prompt,
        objects=objects,
        seed=args.seed + index,
        steps=args.steps,
        guidance=guidance,
        sampler=args.sampler,
        beta=0.0 if condition == "grounding-off" else args.beta,
        feature_cache=args.feature_cache,
        feature_cache_grounded=args.feature_cache_grounded,
    )


# ---- backends -----------------------------------------------------------------------------------


Generate = Callable[[GenerationRequest], np.ndarray]


def open_backend(name: str, model_dir: Path, engines_fp32: Path, engines_fp16: Path | None, threads: int):
    """-> (generate, close) for one backend/precision; BackendUnavailable when it cannot run here."""
    if name == "torch":
        import torch

        from gligen_ref.pipeline import ReferencePipeline

        torch.set_num_threads(threads)
        pipe = ReferencePipeline.from_checkpoint(model_dir)
        return (lambda r: pipe(r).images[0]), (lambda: None)
    from gligen_rt.runtime.pipeline import GligenPipeline

    folder, backend = {
        "ort-fp32": (engines_fp32, "ort-cpu"),
        "ort-fp16": (engines_fp16, "ort-cpu"),
        "openvino-fp32": (engines_fp32, "openvino"),
        "openvino-bf16": (engines_fp32, "openvino-bf16"),
        "openvino-int8": (engines_fp32, "openvino-int8"),
        "openvino-int8a": (engines_fp32, "openvino-int8a"),
        "tensorrt": (engines_fp32, "tensorrt"),
    }[name]
    if folder is None:
        raise BackendUnavailable("no FP16 engine folder given (--engines-fp16)")
    if backend == "tensorrt":  # GPU: no thread count; a one-line unavailable row without a GPU
        from gligen_rt.engines.gpu import require_gpu

        require_gpu("tensorrt")
        pipe = GligenPipeline.from_engines(folder, backend)
    else:
        pipe = GligenPipeline.from_engines(folder, backend, threads=threads)
    return (lambda r: pipe(r).images[0]), pipe.close


def evaluate(args: argparse.Namespace) -> list[dict[str, Any]]:
    scenes = layouts(args.n, args.layout_seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for name in args.backends:
        try:
            generate, close = open_backend(name, args.model, args.engines, args.engines_fp16, args.threads)
        except (GligenError, ImportError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            row = {"backend": name, "available": False, "reason": reason}
            print(json.dumps(row), flush=True)
            results.append(row)
            continue
        try:
            for condition in args.conditions:
                for guidance in args.guidance:
                    tic = time.perf_counter()
                    scores: list[ObjectScore] = []
                    images = []
                    for i, scene in enumerate(scenes):
                        if condition == "shuffled" and len(scene.objects) < 2:
                            continue
                        request = request_for(scene, condition, i, args, guidance)
                        image = generate(request)
                        scores += score(image, scene)
                        if len(images) < args.grid:
                            images.append((image, scene, request))
                    row = {
                        "backend": name,
                        "available": True,
                        "condition": condition,
                        "guidance": guidance,
                        "layouts": sum(1 for s in scenes if condition != "shuffled" or len(s.objects) >= 2),
                        **summarise(scores),
                        "seconds": round(time.perf_counter() - tic, 1),
                    }
                    print(json.dumps(row), flush=True)
                    results.append(row)
                    sweep = f"_g{guidance:g}" if len(args.guidance) > 1 else ""
                    save_grid(images, out / f"grid_{name}_{condition}{sweep}.png")
        finally:
            close()
    record = {
        "steps": args.steps,
        "guidance": args.guidance,
        "sampler": args.sampler,
        "beta": args.beta,
        "feature_cache": args.feature_cache,
        "feature_cache_grounded": args.feature_cache_grounded,
        "layout_seed": args.layout_seed,
        "n": args.n,
        # what the engine rows ran (the torch row is always the whole model)
        "engines": _engine_layout(args.engines),
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / "table.md").write_text(markdown_table(results), encoding="utf-8")
    return results


def _engine_layout(folder: Path) -> dict[str, Any]:
    """The export options of the engine folder that change what its engines compute or hold."""
    from gligen_rt.engines.manifest import load_folder_manifest

    extra = load_folder_manifest(folder).extra
    return {
        k: extra.get(k, d)
        for k, d in (("gate_skip", False), ("feature_cache", False), ("token_downsample", 1))
    }


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | condition | guidance | layouts | objects | AP50 | mean IoU | colour acc | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if not r["available"]:
            lines.append(f"| {r['backend']} | unavailable: {r['reason']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['backend']} | {r['condition']} | {r['guidance']:g} | {r['layouts']} | {r['objects']} | "
            f"{r['ap50']:.3f} | {r['mean_iou']:.3f} | {r['colour_acc']:.3f} | {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def save_grid(items: list[tuple[np.ndarray, Scene, GenerationRequest]], path: Path, cols: int = 8) -> None:
    """Generated images with their requested boxes drawn, ``cols`` per row."""
    from gligen_rt.core.imageio import draw_overlay, save_png

    if not items:
        return
    tiles = [draw_overlay(image, list(req.objects)) for image, _, req in items]
    h, w, _ = tiles[0].shape
    rows = (len(tiles) + cols - 1) // cols
    grid = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = t
    save_png(path, grid)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="grounding accuracy (AP50-like, mean IoU, colour) of a model trained on the synthetic scenes, every backend",
    )
    p.add_argument(
        "--model", type=Path, required=True, help="the trained model's diffusers folder (RUN/model)"
    )
    p.add_argument(
        "--engines",
        type=Path,
        required=True,
        help="its FP32 engine folder (gligen-rt export --checkpoint RUN/model)",
    )
    p.add_argument("--engines-fp16", type=Path, default=None, help="FP16 engine folder (ort-fp16)")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    p.add_argument("--n", type=int, default=64, help="held-out layouts")
    p.add_argument("--layout-seed", type=int, default=EVAL_SEED)
    p.add_argument("--seed", type=int, default=0, help="noise seed of layout 0 (layout i: seed + i)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=[TRAINED_TINY_GUIDANCE],
        help="classifier-free guidance scale(s); several make a sweep (default: the shipped tiny "
        f"model's, {TRAINED_TINY_GUIDANCE:g})",
    )
    p.add_argument("--sampler", default="plms", choices=["plms", "ddim", "dpmpp_2m", "euler"])
    p.add_argument("--beta", type=float, default=1.0, help="grounded fraction of the steps")
    p.add_argument(
        "--feature-cache",
        type=int,
        default=0,
        metavar="K",
        help="reuse the deep UNet features on the plain steps, the whole UNet every K-th (engines "
        "exported with --feature-cache; with --beta below 1)",
    )
    p.add_argument(
        "--feature-cache-grounded",
        type=int,
        default=0,
        metavar="K",
        help="the same on the grounded steps: the whole grounded UNet every K-th, "
        "unet_shallow_grounded between (engines exported with --feature-cache)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grid", type=int, default=16, help="images per PNG grid")
    p.add_argument("--out", type=Path, default=Path("eval-out"))
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    results = evaluate(args)
    print(markdown_table(results), file=sys.stderr)
    return 0
