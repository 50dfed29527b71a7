"""The grounding evaluation's detector and scores, on rendered (ground-truth) scenes."""

from __future__ import annotations

import numpy as np
import pytest

from gligen_ref.train.scenes import FLOOR, Scene, SceneObject, make_scene, render
from gligen_rt.benchmarks.grounding import detect, dominant_colour, palette_labels, score, summarise


def test_detector_finds_every_object_of_rendered_scenes() -> None:
    scores = []
    for i in range(40):
        scene = make_scene(1, i)
        scores += score(render(scene), scene)
    s = summarise(scores)
    assert s["ap50"] == 1.0 and s["colour_acc"] == 1.0 and s["mean_iou"] > 0.9


def test_detector_reports_a_missing_object() -> None:
    floor = np.full((128, 128, 3), FLOOR, np.uint8)
    assert detect(floor, "red") is None
    scene = Scene((SceneObject("red", "square", (0.1, 0.1, 0.4, 0.4)),))
    s = summarise(score(floor, scene))
    assert s["ap50"] == 0.0 and s["mean_iou"] == 0.0 and s["colour_acc"] == 0.0


def test_detector_takes_the_largest_component_and_tolerates_shades() -> None:
    scene = Scene(
        (
            SceneObject("blue", "circle", (0.5, 0.5, 0.9, 0.9)),
            SceneObject("red", "square", (0.05, 0.05, 0.15, 0.15)),
        )
    )
    image = render(scene).astype(int)
    image[image[..., 2] == 220] += np.array([30, 20, -30])  # a shaded blue still counts as blue
    image = np.clip(image, 0, 255).astype(np.uint8)
    box = detect(image, "blue")
    assert box is not None and np.allclose(box, (0.5, 0.5, 0.9, 0.9), atol=2 / 128)
    labels = palette_labels(image)
    assert dominant_colour(labels, (0.5, 0.5, 0.9, 0.9)) == "blue"
    # a moved object is scored against the requested box: a miss
    moved = Scene((SceneObject("blue", "circle", (0.0, 0.0, 0.3, 0.3)),))
    assert summarise(score(image, moved))["ap50"] == 0.0


def test_tensorrt_without_a_gpu_is_an_unavailable_row_not_a_crash(tmp_path) -> None:
    from gligen_rt.benchmarks.grounding import open_backend
    from gligen_rt.core.errors import BackendUnavailable
    from gligen_rt.engines.gpu import gpu_count

    if gpu_count()[0] > 0:
        pytest.skip("an NVIDIA GPU is present: tensorrt may be available here")
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        open_backend("tensorrt", tmp_path / "model", tmp_path / "engines", None, threads=2)
