"""Grounding-engine inputs: boxes, keypoints, null/CFG batches, condition maps, masks, images."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gligen_rt.core.errors import RequestError
from gligen_rt.core.grounding import (
    CLIP_MEAN,
    CLIP_STD,
    STYLE_BOX,
    box_inputs,
    center_crop_to_aspect,
    clip_image_input,
    condition_input,
    inpaint_mask,
    keypoint_inputs,
    load_image,
    null_inputs,
    repeat,
    stack_cfg,
)
from gligen_rt.core.modality import Modality
from gligen_rt.core.request import GroundedObject, Person

D = 8


def _emb(n: int, offset: float) -> np.ndarray:
    return np.arange(n * D, dtype=np.float32).reshape(n, D) + offset


def test_text_box_inputs():
    objs = [GroundedObject((0.1, 0.2, 0.3, 0.4), "a"), GroundedObject((0.5, 0.5, 0.9, 1.0), "b")]
    phr = _emb(2, 1.0)
    out = box_inputs(objs, phr)
    assert set(out) == {"boxes", "masks", "phrase_embeddings"}
    assert out["boxes"].shape == (30, 4) and out["masks"].shape == (30,)
    assert out["phrase_embeddings"].shape == (30, D)
    assert all(v.dtype == np.float32 for v in out.values())
    np.testing.assert_array_equal(out["boxes"][:2], np.array([o.box for o in objs], np.float32))
    np.testing.assert_array_equal(out["masks"], [1, 1] + [0] * 28)
    np.testing.assert_array_equal(out["phrase_embeddings"][:2], phr)
    assert not out["phrase_embeddings"][2:].any() and not out["boxes"][2:].any()


def test_text_image_box_inputs_map_rows_to_objects_in_order():
    objs = [
        GroundedObject((0.1, 0.1, 0.2, 0.2), "cat", "cat.png"),  # phrase 0, image 0
        GroundedObject((0.2, 0.2, 0.3, 0.3), None, "dog.png"),  # image 1
        GroundedObject((0.3, 0.3, 0.4, 0.4), "tree"),  # phrase 1
        GroundedObject((0.4, 0.4, 0.5, 0.5), " ", "x.png"),  # blank phrase = none; image 2
    ]
    phr, img, style = _emb(2, 100.0), _emb(3, 200.0), np.full((1, D), 7.0, np.float32)
    out = box_inputs(objs, phr, img, text_image=True, style_embedding=style)
    assert set(out) == {
        "boxes",
        "masks",
        "text_masks",
        "image_masks",
        "phrase_embeddings",
        "image_embeddings",
    }
    np.testing.assert_array_equal(out["masks"][:6], [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(out["text_masks"][:6], [1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(out["image_masks"][:6], [1, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(out["phrase_embeddings"][[0, 2]], phr)
    assert not out["phrase_embeddings"][[1, 3, 4]].any()
    np.testing.assert_array_equal(out["image_embeddings"][[0, 1, 3]], img)
    np.testing.assert_array_equal(out["image_embeddings"][4], style[0])
    np.testing.assert_array_equal(out["boxes"][4], np.array(STYLE_BOX, np.float32))
    assert STYLE_BOX == (0.0, 0.0, 1.0, 0.01)


def test_box_inputs_counts():
    obj = GroundedObject((0.1, 0.1, 0.2, 0.2), "x")
    out = box_inputs([obj] * 30, _emb(30, 0.0))
    assert out["masks"].sum() == 30
    with pytest.raises(RequestError, match="at most 30"):
        box_inputs([obj] * 31, _emb(31, 0.0))
    with pytest.raises(RequestError, match="at most 30"):
        box_inputs([obj] * 30, _emb(30, 0.0), text_image=True, style_embedding=np.zeros(D))
    with pytest.raises(ValueError):
        box_inputs([obj] * 2, _emb(1, 0.0))


def test_keypoint_inputs():
    kp = [None] * 17
    kp[0] = (0.5, 0.25)
    kp[3] = (0.0, 0.0)  # exactly (0, 0): treated as missing, as the original does
    kp[16] = (0.0, 0.75)
    out = keypoint_inputs([Person(tuple(kp)), Person(tuple([(0.1, 0.2)] * 17))])
    assert out["points"].shape == (136, 2) and out["masks"].shape == (136,)
    assert out["points"].dtype == np.float32 and out["masks"].dtype == np.float32
    np.testing.assert_array_equal(out["points"][0], [0.5, 0.25])
    np.testing.assert_array_equal(out["points"][16], [0.0, 0.75])
    expected = np.zeros(136, np.float32)
    expected[[0, 16]] = 1
    expected[17:34] = 1
    np.testing.assert_array_equal(out["masks"], expected)
    np.testing.assert_array_equal(out["points"][17:34], np.tile(np.float32([0.1, 0.2]), (17, 1)))
    assert not out["points"][34:].any()
    with pytest.raises(RequestError):
        keypoint_inputs([Person(tuple(kp))] * 9)


def test_null_and_stack_cfg():
    objs = [GroundedObject((0.1, 0.2, 0.3, 0.4), "a", "a.png")]
    real = box_inputs(objs, _emb(1, 1.0), _emb(1, 2.0), text_image=True)
    null = null_inputs(real)
    assert set(null) == set(real)
    for k in real:
        assert null[k].shape == real[k].shape and null[k].dtype == np.float32 and not null[k].any()
    batch = stack_cfg(null, real, 3)
    for k in real:
        assert batch[k].shape == (6, *real[k].shape)
        assert not batch[k][:3].any()
        for i in range(3, 6):
            np.testing.assert_array_equal(batch[k][i], real[k])
    np.testing.assert_array_equal(batch["masks"][:, 0], [0, 0, 0, 1, 1, 1])
    assert repeat(real, 2)["boxes"].shape == (2, 30, 4)
    kp = keypoint_inputs([])
    assert stack_cfg(null_inputs(kp), kp, 1)["points"].shape == (2, 136, 2)


def test_inpaint_mask_hand_computed():
    # h = 8, w = 10: box (0.25, 0.5, 0.55, 0.9) -> rows int(4.0)=4 : int(7.2)=7, cols int(2.5)=2 : int(5.5)=5
    mask = inpaint_mask([(0.25, 0.5, 0.55, 0.9)], 8, 10)
    expected = np.ones((1, 8, 10), np.float32)
    expected[0, 4:7, 2:5] = 0
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, expected)
    # two boxes, one touching the far edges; zero (padding) boxes change nothing
    mask = inpaint_mask(np.array([[0.0, 0.0, 0.125, 0.25], [0.75, 0.5, 1.0, 1.0], [0, 0, 0, 0]]), 4, 8)
    expected = np.ones((1, 4, 8), np.float32)
    expected[0, 0:1, 0:1] = 0
    expected[0, 2:4, 6:8] = 0
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(inpaint_mask([], 3, 3), np.ones((1, 3, 3), np.float32))


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("modality", ["hed", "canny", "depth", "normal"])
def test_condition_rgb(tmp_path, modality):
    arr = _rgb(40, 60)
    path = tmp_path / "cond.png"
    Image.fromarray(arr).save(path)
    out = condition_input(path, modality, 32, 32)
    assert set(out) == {"condition", "masks"}
    assert out["condition"].shape == (3, 32, 32) and out["condition"].dtype == np.float32
    np.testing.assert_array_equal(out["masks"], np.ones((1,), np.float32))
    # the original: center-crop to min side (left = round((60-40)/2) = 10), default-bicubic resize
    ref = Image.fromarray(arr).crop((10, 0, 50, 40)).resize((32, 32), Image.Resampling.BICUBIC)
    expected = (np.asarray(ref, np.float32).transpose(2, 0, 1) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(out["condition"], expected, atol=1e-6)
    assert out["condition"].min() >= -1 and out["condition"].max() <= 1


def test_condition_non_square_target():
    out = condition_input(_rgb(40, 40), Modality.CANNY, 16, 32)
    assert out["condition"].shape == (3, 16, 32)


def test_condition_sem_one_hot():
    labels = np.zeros((6, 8), np.uint8)
    labels[:, :4] = 3
    labels[:, 4:] = 151
    labels[0, 0] = 0
    out = condition_input(labels, "sem", 6, 6)  # crop columns 1..6, same size: nearest keeps ids
    cond = out["condition"]
    assert cond.shape == (152, 6, 6) and cond.dtype == np.float32
    assert set(np.unique(cond)) <= {0.0, 1.0}
    np.testing.assert_array_equal(cond.sum(axis=0), np.ones((6, 6)))
    ids = cond.argmax(axis=0)
    np.testing.assert_array_equal(ids, labels[:, 1:7])
    np.testing.assert_array_equal(out["masks"], [1.0])
    big = condition_input(labels, "sem", 12, 12)["condition"]
    assert big.shape == (152, 12, 12)
    assert set(np.unique(big.argmax(axis=0))) <= {0, 3, 151}
    bad = labels.copy()
    bad[2, 2] = 152
    with pytest.raises(RequestError, match="below 152"):
        condition_input(bad, "sem", 6, 6)


def test_center_crop_to_aspect():
    im = Image.fromarray(_rgb(30, 50))
    assert center_crop_to_aspect(im, 10, 10).size == (30, 30)
    assert center_crop_to_aspect(im, 10, 20).size == (50, 25)
    assert center_crop_to_aspect(im, 30, 50) is im


def test_load_image(tmp_path):
    arr = _rgb(24, 32)
    path = tmp_path / "im.jpg"
    Image.fromarray(arr).save(path)
    out = load_image(str(path), 16, 16)
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    assert -1 <= out.min() and out.max() <= 1
    flat = load_image(Image.fromarray(np.full((20, 20, 3), 255, np.uint8)), 8, 16)
    np.testing.assert_allclose(flat, np.ones((3, 8, 16)), atol=1e-6)


def test_unreadable_images_are_request_errors(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    for fn in (
        lambda p: load_image(p, 8, 8),
        lambda p: clip_image_input(p, 8),
        lambda p: condition_input(p, "hed", 8, 8),
    ):
        for path in (bad, tmp_path / "missing.png"):
            with pytest.raises(RequestError) as info:
                fn(path)
            assert "\n" not in str(info.value)


@pytest.mark.parametrize("size", [32, 224])
def test_clip_preprocessing_matches_transformers(tmp_path, size):
    transformers = pytest.importorskip("transformers")
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        Processor = transformers.CLIPImageProcessor
    proc = Processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    images = [
        Image.fromarray(_rgb(50, 37, 1)),
        Image.fromarray(_rgb(37, 50, 2)),
        Image.fromarray(_rgb(64, 64, 3)),
        Image.fromarray(_rgb(301, 123, 4)),
        Image.fromarray(np.random.default_rng(5).integers(0, 256, (45, 70, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(_rgb(40, 40, 6)[..., 0], "L"),
    ]
    for i, im in enumerate(images):
        # the original converts to RGB first (alpha dropped); transformers >= 5 would composite it on white
        ref = np.asarray(proc(images=im.convert("RGB"), return_tensors="np")["pixel_values"][0])
        ours = clip_image_input(im, size)
        assert ours.shape == (3, size, size) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=f"image {i}")
    path = tmp_path / "im.png"
    images[0].save(path)
    np.testing.assert_allclose(clip_image_input(str(path), size), clip_image_input(images[0], size), atol=0)


def test_clip_constants():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_core_modules_stay_torch_free():
    code = (
        "import sys; import gligen_rt.core.request, gligen_rt.core.grounding, gligen_rt.core.noise, "
        "gligen_rt.core.imageio; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
