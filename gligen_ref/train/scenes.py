"""Synthetic grounded scenes: coloured shapes on a grey floor, deterministic per seed (torch-free).

A scene is 1-4 objects, each a distinct colour of ``COLOURS`` and one of ``SHAPES``, with random
sizes and positions (boxes overlap little, so every object stays visible), drawn on a grey floor:

    prompt   "a red circle and a blue square on a grey floor"
    objects  [{"phrase": "red circle", "box": [x0, y0, x1, y1]}, ...]   box = the shape's tight
                                                                       bounding box, in [0, 1]

The data folder (what ``gligen-rt train`` reads, what ``write_folder`` writes):

    DIR/dataset.json          {"format": "gligen-scenes-1", "size": 128, "seed": 0, "count": N,
                               "shapes": [...], "colours": {"red": [r, g, b], ...}}
    DIR/<name>.png            one RGB image per scene (any name; PNG or JPEG)
    DIR/<name>.json           its request: {"prompt": ..., "objects": [{"phrase", "box"}]}

``dataset.json`` is optional for a folder of one's own images; when present its ``shapes`` and
``colours`` are the vocabulary every phrase must come from ("<colour> <shape>").
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FORMAT = "gligen-scenes-1"
SHAPES = ("circle", "square", "triangle", "diamond")
# Six colours far apart in RGB (and from the floor): the grounding evaluation finds objects by colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "cyan": (40, 200, 210),
    "magenta": (210, 50, 190),
}
FLOOR = (128, 128, 128)
MAX_SCENE_OBJECTS = 4
MIN_SIDE, MAX_SIDE = 0.22, 0.45  # object side as a fraction of the image
MAX_IOU = 0.05  # boxes of one scene overlap at most this much


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    box: tuple[float, float, float, float]  # normalised x0, y0, x1, y1

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]

    @property
    def prompt(self) -> str:
        return caption([o.phrase for o in self.objects])

    def request(self) -> dict:
        """The request-schema JSON of this scene."""
        return {
            "prompt": self.prompt,
            "objects": [{"phrase": o.phrase, "box": [round(v, 6) for v in o.box]} for o in self.objects],
        }


def caption(phrases: list[str]) -> str:
    """['red circle', 'blue square'] -> 'a red circle and a blue square on a grey floor'."""
    items = [f"a {p}" for p in phrases]
    if not items:
        return "a grey floor"
    body = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"{body} on a grey floor"


def iou(a, b) -> float:
    """Intersection over union of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_scene(seed: int, index: int, size: int = 128) -> Scene:
    """Scene ``index`` of the stream ``seed`` (independent of every other index: any subset is cheap)."""
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(1, MAX_SCENE_OBJECTS + 1))
    colours = rng.permutation(list(COLOURS))[:n]
    objects: list[SceneObject] = []
    for colour in colours:
        shape = str(SHAPES[int(rng.integers(len(SHAPES)))])
        for _ in range(50):
            w = float(rng.uniform(MIN_SIDE, MAX_SIDE))
            h = float(np.clip(w * rng.uniform(0.8, 1.25), MIN_SIDE, MAX_SIDE))
            x0 = float(rng.uniform(0.02, 0.98 - w))
            y0 = float(rng.uniform(0.02, 0.98 - h))
            # snap to the pixel grid so the box is the drawn shape's tight box
            px = [round(v * size) / size for v in (x0, y0, x0 + w, y0 + h)]
            box = (px[0], px[1], px[2], px[3])
            if all(iou(box, o.box) <= MAX_IOU for o in objects):
                objects.append(SceneObject(str(colour), shape, box))
                break
    return Scene(tuple(objects))


def render(scene: Scene, size: int = 128) -> np.ndarray:
    """The scene as a uint8 (size, size, 3) image."""
    im = Image.new("RGB", (size, size), FLOOR)
    d = ImageDraw.Draw(im)
    for o in scene.objects:
        x0, y0, x1, y1 = (round(v * size) for v in o.box)
        x1, y1 = x1 - 1, y1 - 1  # PIL's coordinates are inclusive
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            d.ellipse([x0, y0, x1, y1], fill=fill)
        elif o.shape == "square":
            d.rectangle([x0, y0, x1, y1], fill=fill)
        elif o.shape == "triangle":
            d.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
        elif o.shape == "diamond":
            xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
            d.polygon([(xm, y0), (x1, ym), (xm, y1), (x0, ym)], fill=fill)
        else:
            raise ValueError(f"unknown shape {o.shape!r}")
    return np.asarray(im, dtype=np.uint8)


def dataset_info(size: int, seed: int, count: int) -> dict:
    return {
        "format": FORMAT,
        "size": size,
        "seed": seed,
        "count": count,
        "shapes": list(SHAPES),
        "colours": {k: list(v) for k, v in COLOURS.items()},
    }


def write_folder(out: str | os.PathLike[str], count: int, seed: int = 0, size: int = 128) -> Path:
    """Write scenes 0..count-1 of stream ``seed`` as a data folder, atomically (temporary folder, rename)."""
    target = Path(out)
    if target.exists():
        raise FileExistsError(f"{target} exists: choose a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for i in range(count):
            scene = make_scene(seed, i, size)
            Image.fromarray(render(scene, size)).save(tmp / f"scene_{i:06d}.png")
            (tmp / f"scene_{i:06d}.json").write_text(json.dumps(scene.request()) + "\n", encoding="utf-8")
        (tmp / "dataset.json").write_text(
            json.dumps(dataset_info(size, seed, count), indent=2) + "\n", encoding="utf-8"
        )
        os.replace(tmp, target)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
