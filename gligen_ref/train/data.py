"""Reading a training data folder (format: gligen_ref/train/scenes.py) with one-line errors.

Everything is checked before training starts, so a bad folder never leaves a half-written
checkpoint: a missing folder, a file that is not an image, a JSON that is not a request, a box outside
[0, 1] or empty, a phrase outside the folder's vocabulary (``dataset.json``), an image of the wrong size.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from gligen_rt.core.errors import DataError
from gligen_rt.core.modality import MAX_OBJECTS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # uint8 (H, W, 3)
    prompt: str
    phrases: tuple[str, ...]
    boxes: tuple[tuple[float, float, float, float], ...]


@dataclass(frozen=True)
class DataFolder:
    path: Path
    samples: tuple[Sample, ...]
    info: dict  # dataset.json, or {} when absent

    @property
    def phrases(self) -> list[str]:
        """Every distinct phrase, sorted."""
        return sorted({p for s in self.samples for p in s.phrases})


def _request(path: Path) -> tuple[str, tuple[str, ...], tuple[tuple[float, float, float, float], ...]]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: not a JSON request ({exc}); write {{'prompt': ..., 'objects': [...]}}"
        ) from None
    if not isinstance(d, dict) or not isinstance(d.get("prompt"), str):
        raise DataError(f"{path}: needs a string 'prompt' (request schema: prompt, objects[phrase, box])")
    objects = d.get("objects", [])
    if not isinstance(objects, list) or len(objects) > MAX_OBJECTS:
        raise DataError(f"{path}: 'objects' must be a list of at most {MAX_OBJECTS} {{phrase, box}}")
    phrases, boxes = [], []
    for i, o in enumerate(objects):
        where = f"{path}: objects[{i}]"
        if not isinstance(o, dict) or not isinstance(o.get("phrase"), str) or not o["phrase"].strip():
            raise DataError(f"{where} needs a non-empty string 'phrase'")
        box = o.get("box")
        if (
            not isinstance(box, list)
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
        ):
            raise DataError(f"{where}.box must be 4 numbers [x0, y0, x1, y1] in [0, 1]")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
            raise DataError(f"{where}.box {box} is outside [0, 1]: give normalised coordinates")
        if not (x1 > x0 and y1 > y0):
            raise DataError(f"{where}.box {box} is empty: need x1 > x0 and y1 > y0")
        phrases.append(o["phrase"].strip())
        boxes.append((x0, y0, x1, y1))
    return d["prompt"], tuple(phrases), tuple(boxes)


def _image(path: Path, size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError):
        raise DataError(f"{path}: not a readable image: replace or remove it") from None
    if size is not None and rgb.shape[:2] != (size, size):
        raise DataError(f"{path}: image is {rgb.shape[1]}x{rgb.shape[0]}, the model trains at {size}x{size}")
    return rgb


def vocabulary_check(info: dict, phrase: str, where: str) -> None:
    shapes, colours = info.get("shapes"), info.get("colours")
    if not shapes or not colours:
        return
    words = phrase.split()
    if len(words) != 2 or words[0] not in colours:
        raise DataError(
            f"{where}: phrase {phrase!r} is not '<colour> <shape>' with a colour of dataset.json ({', '.join(colours)})"
        )
    if words[1] not in shapes:
        raise DataError(
            f"{where}: shape {words[1]!r} is not in the data's vocabulary ({', '.join(shapes)}): "
            "add it to dataset.json 'shapes' or fix the phrase"
        )


def read_folder(path: str | Path, size: int | None = None, limit: int | None = None) -> DataFolder:
    """Validate and load a data folder (``limit``: the first N samples by name)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder (make one with `gligen-rt train scenes --out DIR`)")
    info: dict = {}
    if (root / "dataset.json").is_file():
        try:
            info = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{root / 'dataset.json'}: not JSON ({exc})") from None
        if not isinstance(info, dict):
            raise DataError(f"{root / 'dataset.json'}: expected a JSON object")
    requests = sorted(p for p in root.glob("*.json") if p.name != "dataset.json")
    if limit is not None:
        requests = requests[:limit]
    if not requests:
        raise DataError(f"{root}: no <name>.json requests (each image needs one beside it)")
    samples = []
    for req in requests:
        image_path = next((req.with_suffix(s) for s in IMAGE_SUFFIXES if req.with_suffix(s).is_file()), None)
        if image_path is None:
            raise DataError(f"{req}: no image beside it ({req.stem}.png or .jpg)")
        prompt, phrases, boxes = _request(req)
        for i, p in enumerate(phrases):
            vocabulary_check(info, p, f"{req}: objects[{i}]")
        samples.append(Sample(_image(image_path, size), prompt, phrases, boxes))
    return DataFolder(root, tuple(samples), info)
