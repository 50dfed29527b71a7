"""Output images: uint8 conversion, atomic PNG writes, overlays, output names; and the noise stream."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from gligen_rt.core.errors import NumericalError, RequestError
from gligen_rt.core.imageio import draw_overlay, output_paths, save_png, to_uint8
from gligen_rt.core.noise import NoiseStream
from gligen_rt.core.request import GroundedObject, Person


def test_to_uint8():
    x = np.zeros((2, 3, 2, 2), np.float32)
    x[0, 0, 0, 0] = -1.0
    x[0, 1, 0, 0] = 1.0
    x[0, 2, 0, 0] = 3.0  # clamped
    x[1, 0, 1, 1] = -7.0  # clamped
    out = to_uint8(x)
    assert out.shape == (2, 2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [0, 255, 255]
    assert out[0, 1, 1].tolist() == [128, 128, 128]  # 0 -> 127.5 -> round half to even = 128
    assert out[1, 1, 1, 0] == 0
    with pytest.raises(NumericalError):
        to_uint8(np.full((1, 3, 2, 2), np.nan, np.float32))


def _leftovers(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_save_png_round_trip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    save_png(path, arr)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), arr)
    assert _leftovers(tmp_path) == ["a.png"]
    save_png(str(path), arr[..., 0])  # overwrite in place
    assert np.asarray(Image.open(path)).shape == (9, 7)
    assert _leftovers(tmp_path) == ["a.png"]


def test_save_png_missing_folder(tmp_path):
    with pytest.raises(RequestError) as info:
        save_png(tmp_path / "no" / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert "\n" not in str(info.value)
    assert _leftovers(tmp_path) == []
    (tmp_path / "file").write_text("x")  # a file where the folder should be (fails even as root)
    with pytest.raises(RequestError):
        save_png(tmp_path / "file" / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert _leftovers(tmp_path) == ["file"]


def test_save_png_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise RuntimeError("disk vanished")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk vanished"):
        save_png(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert _leftovers(tmp_path) == []


def test_save_png_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    save_png(path, np.full((4, 4, 3), 9, np.uint8))

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(RequestError, match="No space left"):
        save_png(path, np.zeros((4, 4, 3), np.uint8))
    assert _leftovers(tmp_path) == ["a.png"]
    assert np.asarray(Image.open(path))[0, 0, 0] == 9


def test_save_png_into_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user that ignores folder permissions")
        with pytest.raises(RequestError):
            save_png(folder / "a.png", np.zeros((4, 4, 3), np.uint8))
        assert _leftovers(folder) == []
    finally:
        folder.chmod(0o700)


def test_draw_overlay_marks_box_border():
    image = np.full((64, 64, 3), 128, np.uint8)
    objs = [GroundedObject((0.25, 0.25, 0.75, 0.75), "a cat")]
    out = draw_overlay(image, objs)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == 128).all()  # input untouched
    assert (out[40, 16] != 128).any()  # left border
    assert (out[47, 40] != 128).any()  # bottom border (y1 * 64 - 1)
    assert (out[32, 32] == 128).all()  # interior untouched
    assert (out[:16, 16:48] != 128).any()  # label drawn above the box


def test_draw_overlay_plain_boxes_and_persons():
    image = np.zeros((32, 48, 3), np.uint8)
    out = draw_overlay(image, [(0.0, 0.0, 0.5, 0.5)], labels=["dog"])
    assert out[10, 0].any()
    kps = [None] * 17
    kps[0] = (0.5, 0.5)
    out = draw_overlay(image, persons=[Person(tuple(kps))])
    assert out[16, 24].any()
    assert not out[0, 0].any()


def test_output_paths():
    assert output_paths("out.png", 1) == ["out.png"]
    assert output_paths("dir/out.png", 3) == ["dir/out_0.png", "dir/out_1.png", "dir/out_2.png"]
    assert output_paths("out", 2) == ["out_0.png", "out_1.png"]


def test_noise_stream_is_seeded_and_ordered():
    a, b = NoiseStream(5), NoiseStream(5)
    x1, x2 = a.latents((2, 4, 8, 8)), a.like(np.zeros((1, 4, 8, 8)))
    np.testing.assert_array_equal(x1, b.latents((2, 4, 8, 8)))
    np.testing.assert_array_equal(x2, b.like(np.zeros((1, 4, 8, 8))))
    assert x1.dtype == np.float32 and x2.shape == (1, 4, 8, 8)
    assert not np.array_equal(x1[:1], x2)
    np.testing.assert_array_equal(
        x1, np.random.default_rng(5).standard_normal((2, 4, 8, 8), dtype=np.float32)
    )
    assert not np.array_equal(x1, NoiseStream(6).latents((2, 4, 8, 8)))
    big = NoiseStream(0).latents((64, 64, 16))
    assert abs(float(big.mean())) < 0.02 and abs(float(big.std()) - 1) < 0.02
