"""Shared helpers of the runtime tests (no tests here): tiny engine folders exported once per session,
requests per modality with gates non-zero, the reference pipeline on the same weights, PSNR.

Engine folders go to the session's temporary folder (pytest's basetemp), shared by every runtime
test file of the session through runtime/tiny.py's on-disk cache. Set GLIGEN_RT_TEST_CACHE to a
folder to keep them across sessions (the key covers the specs and the exporter's sources).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gligen_rt.core.imageio import psnr  # noqa: F401  (re-exported for the runtime tests)
from gligen_rt.core.modality import NUM_KEYPOINTS, Modality
from gligen_rt.core.request import GenerationRequest, GroundedObject, Person

SIZE = 64
STEPS = 4
# (modality, inpaint, with unet_plain): plain UNets for one model of each family; the others run
# gate-0 steps on `unet` with gate 0 (single-UNet folders export faster).
CASES = [
    ("text-box", False, True),
    ("text-image-box", False, False),
    ("keypoint", False, False),
    ("hed", False, True),
    ("canny", False, False),
    ("depth", False, False),
    ("normal", False, False),
    ("sem", False, False),
    ("text-box", True, True),
    ("text-image-box", True, False),
]


def case_id(case: tuple[str, bool, bool]) -> str:
    return ("inpaint-" if case[1] else "") + case[0]


def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("GLIGEN_RT_TEST_CACHE")
    return Path(env) if env else tmp_path_factory.getbasetemp() / "gligen-rt-engines"


def engine_folder(
    tmp_path_factory: pytest.TempPathFactory,
    modality: str,
    inpaint: bool = False,
    plain: bool = True,
    precision: str = "fp32",
    feature_cache: bool = False,
) -> Path:
    """The tiny engine folder of build_model(tiny_random(modality, inpaint), 0), exported once per session."""
    from gligen_rt.runtime.tiny import tiny_engines

    return tiny_engines(
        modality,
        inpaint,
        precision=precision,
        plain=plain,
        feature_cache=feature_cache,
        cache_dir=cache_root(tmp_path_factory),
    )


def reference(modality: str, inpaint: bool = False) -> Any:
    """gligen_ref's ReferencePipeline on the same weights as the tiny engine folders (seed 0)."""
    from gligen_ref.model import build_model
    from gligen_ref.pipeline import ReferencePipeline
    from gligen_rt.core.config import tiny_random
    from gligen_rt.core.tokenizer import ClipTokenizer

    return ReferencePipeline(build_model(tiny_random(modality, inpaint), 0), ClipTokenizer.default())


def write_images(folder: Path) -> dict[str, str]:
    """Deterministic input images: two references, a style image, a condition map, a sem label map,
    an image to inpaint. Returns {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    paths = {}
    smooth = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).clip(0, 255).astype(np.uint8)
    for name, arr in {
        "ref_a": (rng.random((48, 40, 3)) * 255).astype(np.uint8),
        "ref_b": smooth[::-1].copy(),
        "style": (255 - smooth).astype(np.uint8),
        "condition": np.where(((xx // 8 + yy // 8) % 2)[..., None] == 1, smooth, 255 - smooth).astype(
            np.uint8
        ),
        "inpaint": smooth,
    }.items():
        p = folder / f"{name}.png"
        Image.fromarray(arr).save(p)
        paths[name] = str(p)
    labels = ((xx // 16) * 7 + (yy // 16) * 13) % 150
    p = folder / "sem.png"
    Image.fromarray(labels.astype(np.uint8), mode="L").save(p)
    paths["sem"] = str(p)
    return paths


def request_for(modality: str, inpaint: bool, images: dict[str, str], **changes: Any) -> GenerationRequest:
    """A request exercising the modality, with two grounded steps then two plain ones (4 steps)."""
    m = Modality(modality)
    kw: dict[str, Any] = dict(
        prompt="a cat and a dog in a garden",
        negative_prompt="blurry",
        seed=11,
        steps=STEPS,
        height=SIZE,
        width=SIZE,
        alpha_type=(0.5, 0.0, 0.5),
    )
    if m is Modality.TEXT_BOX:
        kw["objects"] = (
            GroundedObject((0.05, 0.1, 0.5, 0.6), "a cat"),
            GroundedObject((0.45, 0.4, 0.95, 0.95), "a small dog"),
        )
    elif m is Modality.TEXT_IMAGE_BOX:
        kw["objects"] = (
            GroundedObject((0.05, 0.1, 0.5, 0.6), "a cat", images["ref_a"]),
            GroundedObject((0.45, 0.4, 0.95, 0.95), None, images["ref_b"]),
            GroundedObject((0.3, 0.0, 0.7, 0.3), "a bird"),
        )
        if not inpaint:
            kw["style_image"] = images["style"]
    elif m is Modality.KEYPOINT:
        kps = tuple(None if j % 5 == 4 else (0.2 + 0.03 * j, 0.1 + 0.045 * j) for j in range(NUM_KEYPOINTS))
        kw["persons"] = (Person(kps), Person(tuple(None if p is None else (p[0] + 0.2, p[1]) for p in kps)))
    else:
        kw["condition"] = images["sem" if m is Modality.SEM else "condition"]
    if inpaint:
        kw["inpaint_image"] = images["inpaint"]
    kw.update(changes)
    return GenerationRequest(**kw)


def check_case(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[str, bool, bool], images: dict[str, str]
) -> dict:
    """Parity with the reference on one modality: ort-cpu and openvino FP32 >= 45 dB, openvino-bf16
    >= 30 dB, the torch backend equal; and the grounding effect.

    Returns {backend: psnr} (also printed, for the record).
    """
    from gligen_rt.runtime import GligenPipeline

    modality, inpaint, plain = case
    folder = engine_folder(tmp_path_factory, modality, inpaint, plain)
    request = request_for(modality, inpaint, images)
    ref = reference(modality, inpaint)
    expected = ref(request)
    # The runtime's loop on the torch backend is the reference's arithmetic exactly.
    with GligenPipeline.from_engines(folder, "torch", model=ref.model) as pipe:
        same = pipe(request)
    assert np.array_equal(same.images, expected.images) and np.array_equal(same.latents, expected.latents)
    out = {}
    for backend in ("ort-cpu", "openvino", "openvino-bf16"):
        with GligenPipeline.from_engines(folder, backend, threads=2) as pipe:
            assert pipe.backend.has("unet_plain") == plain
            result = pipe(request)
            out[backend] = psnr(result.images, expected.images)
            assert result.images.shape == (1, SIZE, SIZE, 3) and result.images.dtype == np.uint8
            scale = np.abs(expected.latents).max()
            if backend != "openvino-bf16":
                assert np.abs(result.latents - expected.latents).max() < 1e-2 * scale
            if backend == "ort-cpu":
                grounding_changes_output(pipe, request, result.images, images)
    print(f"PSNR {case_id(case)}: " + ", ".join(f"{k} {v:.1f} dB" for k, v in out.items()))
    for backend, value in out.items():
        bar = 30.0 if backend == "openvino-bf16" else 45.0
        assert value >= bar, f"{case_id(case)} on {backend}: PSNR {value:.1f} dB < {bar:.0f}"
    return out


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a[0].astype(np.float64) - b[0].astype(np.float64)).mean(-1)


def grounding_changes_output(
    pipe: Any, request: GenerationRequest, grounded: np.ndarray, images: dict[str, str]
) -> None:
    """Grounding matters: the same request with every gate 0 differs, and changing the grounding changes
    the image. Where the model is spatially aligned by construction (condition maps: the downsampler
    map; inpainting: the mask), the change follows the edited region. Box and keypoint tokens reach
    every position through attention: a random-weight model has learned no localization to test."""
    import dataclasses

    m = pipe.modality
    ungrounded = pipe(dataclasses.replace(request, alpha_type=(0.0, 0.0, 1.0))).images
    assert _diff(grounded, ungrounded).mean() > 0.2, "grounding does not change the image"
    if m.is_spatial:
        # The map reaches the UNet spatially aligned (the downsampler's `extra`, concatenated to the
        # latent): editing its top-left quadrant changes `extra` there and nowhere beyond the
        # downsampler's footprint; the image changes too.
        from gligen_rt.core.grounding import condition_input

        arr = np.array(Image.open(request.condition))
        h, w = arr.shape[:2]
        arr[: h // 2, : w // 2] = 0 if m is Modality.SEM else 255 - arr[: h // 2, : w // 2]
        path = str(Path(request.condition).with_name("edited_" + Path(request.condition).name))
        Image.fromarray(arr).save(path)
        extras = []
        for source in (request.condition, path):
            g = condition_input(source, m, SIZE, SIZE)
            extras.append(pipe.backend.run("grounding", {k: v[None] for k, v in g.items()})["extra"][0])
        d = np.abs(extras[0] - extras[1]).max(axis=0)  # (h, w) latent map
        q, far = SIZE // 16, SIZE // 8 - 2  # the edited quadrant; beyond the footprint
        assert d[:q, :q].max() > 1e-3 and d[far:, :].max() == 0.0 and d[:, far:].max() == 0.0, d
        assert _diff(grounded, pipe(dataclasses.replace(request, condition=path)).images).mean() > 0.2
    elif pipe.config.inpaint:
        i = max(k for k, o in enumerate(request.objects) if o.phrase is not None)
        objects = list(request.objects)
        objects[i] = dataclasses.replace(objects[i], phrase="a red sports car")
        d = _diff(grounded, pipe(dataclasses.replace(request, objects=tuple(objects))).images)
        keep = np.ones((SIZE, SIZE), bool)
        for o in request.objects:
            keep[int(o.box[1] * SIZE) : int(o.box[3] * SIZE), int(o.box[0] * SIZE) : int(o.box[2] * SIZE)] = (
                False
            )
        x0, y0, x1, y1 = (int(v * SIZE) for v in request.objects[i].box)
        inside, outside = d[y0:y1, x0:x1].mean(), d[keep].mean()
        assert inside > 2.0 * outside, (
            f"a new phrase changed its box by {inside:.2f}, the kept region by {outside:.2f}"
        )
    else:
        first = request.objects[0] if m.is_box else None
        if first is not None:
            x0, y0, x1, y1 = first.box
            moved = dataclasses.replace(first, box=(1.0 - x1, y0, 1.0 - x0, y1))
            changed = pipe(dataclasses.replace(request, objects=(moved, *request.objects[1:]))).images
        else:
            p = request.persons[0]
            moved_p = Person(tuple(None if k is None else (1.0 - k[0], k[1]) for k in p.keypoints))
            changed = pipe(dataclasses.replace(request, persons=(moved_p, *request.persons[1:]))).images
        assert _diff(grounded, changed).mean() > 0.05, "moving the grounding does not change the image"
