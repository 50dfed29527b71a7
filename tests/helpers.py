"""Test helpers: write small input images and build a request for every modality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gligen_rt.core.modality import NUM_KEYPOINTS, SEM_CLASSES, Modality
from gligen_rt.core.request import GenerationRequest, GroundedObject, Person

MODALITY_CASES = [
    ("text-box", False),
    ("text-image-box", False),
    ("keypoint", False),
    ("hed", False),
    ("canny", False),
    ("depth", False),
    ("normal", False),
    ("sem", False),
    ("text-box", True),
    ("text-image-box", True),
]


def case_id(case: tuple[str, bool]) -> str:
    return ("inpaint-" if case[1] else "") + case[0]


def write_image(path: Path, size: int = 96, seed: int = 0, mode: str = "RGB") -> str:
    """A random smooth-ish image (or an 'L' label map for sem) written as PNG; returns its path."""
    rng = np.random.default_rng(seed)
    if mode == "L":
        small = rng.integers(0, SEM_CLASSES, (size // 16, size // 16), dtype=np.uint8)
        Image.fromarray(small, "L").resize((size, size), Image.NEAREST).save(path)
    else:
        small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(small, "RGB").resize((size, size), Image.BILINEAR).save(path)
    return str(path)


def make_request(
    modality: str,
    inpaint: bool,
    folder: Path,
    *,
    box=(0.1, 0.2, 0.5, 0.6),
    seed: int = 1,
    steps: int = 2,
    size: int = 64,
    cond_seed: int = 0,
    **kw,
) -> GenerationRequest:
    """A valid request for the modality, its files written into `folder`."""
    m = Modality(modality)
    objects: tuple[GroundedObject, ...] = ()
    persons: tuple[Person, ...] = ()
    condition = inpaint_image = None
    if m is Modality.TEXT_BOX:
        objects = (
            GroundedObject(box=box, phrase="a cat"),
            GroundedObject(box=(0.6, 0.6, 0.9, 0.95), phrase="a dog"),
        )
    elif m is Modality.TEXT_IMAGE_BOX:
        img = write_image(folder / "ref.png", seed=3)
        objects = (
            GroundedObject(box=box, phrase="a cat", image=img),
            GroundedObject(box=(0.6, 0.6, 0.9, 0.95), phrase="a dog"),
        )
    elif m is Modality.KEYPOINT:
        x0, y0, x1, y1 = box
        pts = tuple(
            (x0 + (x1 - x0) * (j % 4) / 3, y0 + (y1 - y0) * (j // 4) / 4) for j in range(NUM_KEYPOINTS)
        )
        persons = (Person(keypoints=pts),)
    else:
        mode = "L" if m is Modality.SEM else "RGB"
        condition = write_image(folder / f"cond{cond_seed}.png", seed=cond_seed, mode=mode)
    if inpaint:
        inpaint_image = write_image(folder / "inpaint.png", seed=5)
    return GenerationRequest(
        prompt="a room",
        objects=objects,
        persons=persons,
        condition=condition,
        inpaint_image=inpaint_image,
        seed=seed,
        steps=steps,
        height=size,
        width=size,
        **kw,
    )
