"""Shared fixtures: cached tiny random GLIGEN models (gates non-zero) and matching grounding inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from gligen_ref.model import GLIGENModel, build_model
from gligen_rt.core.config import ModelConfig, tiny_random
from gligen_rt.core.modality import MAX_OBJECTS, MAX_PERSONS, NUM_KEYPOINTS, Modality


@pytest.fixture(scope="session", autouse=True)
def openvino_blob_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """OpenVINO compiles each exported tiny graph once per session: later loads of the same folder
    (dozens across the suite) read the compiled blob ($GLIGEN_RT_OPENVINO_CACHE, engines/openvino.py;
    tests/test_openvino.py checks that a blob gives the same image). A value already set is kept."""
    import os

    from gligen_rt.engines.openvino import ONNX_CACHE_ENV

    if os.environ.get(ONNX_CACHE_ENV, "").strip():
        yield
        return
    os.environ[ONNX_CACHE_ENV] = str(tmp_path_factory.getbasetemp() / "openvino-blobs")
    yield
    os.environ.pop(ONNX_CACHE_ENV, None)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread for a test module (restored after): tiny-model forwards are latency bound,
    and on a shared 2-core machine OpenMP spin-waiting makes them 5-10x slower with 2 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., GLIGENModel]:
    """``tiny_model(modality="text-box", inpaint=False)`` -> build_model(tiny_random(...), seed 0), cached.

    The models are shared: do not modify them in a test (copy.deepcopy first).
    """
    cache: dict[tuple[Modality, bool], GLIGENModel] = {}

    def get(modality: Modality | str = Modality.TEXT_BOX, inpaint: bool = False) -> GLIGENModel:
        key = (Modality(modality), inpaint)
        if key not in cache:
            cache[key] = build_model(tiny_random(*key), seed=0)
        return cache[key]

    return get


def make_grounding_inputs(
    config: ModelConfig, batch: int = 1, size: int = 128, seed: int = 0, n_objects: int = 2
) -> dict[str, torch.Tensor]:
    """Random grounding inputs for ``config.modality`` (float32), named as the grounding engine's inputs.

    Boxes: ``n_objects`` real objects (masks 1) then padding (0); spatial: condition at ``size`` px.
    """
    g = torch.Generator().manual_seed(seed)
    d = config.context_dim
    m = config.modality
    if m.is_box:
        xy0 = torch.rand(batch, MAX_OBJECTS, 2, generator=g) * 0.5
        boxes = torch.cat([xy0, xy0 + 0.1 + 0.4 * torch.rand(batch, MAX_OBJECTS, 2, generator=g)], dim=-1)
        masks = torch.zeros(batch, MAX_OBJECTS)
        masks[:, :n_objects] = 1
        boxes = boxes * masks[..., None]
        inputs = {
            "boxes": boxes,
            "masks": masks,
            "phrase_embeddings": torch.randn(batch, MAX_OBJECTS, d, generator=g) * masks[..., None],
        }
        if m is Modality.TEXT_IMAGE_BOX:
            inputs["text_masks"] = masks.clone()
            inputs["image_masks"] = masks.clone()
            inputs["image_embeddings"] = torch.randn(batch, MAX_OBJECTS, d, generator=g) * masks[..., None]
        return inputs
    if m is Modality.KEYPOINT:
        n = MAX_PERSONS * NUM_KEYPOINTS
        masks = torch.zeros(batch, n)
        masks[:, : n_objects * NUM_KEYPOINTS] = 1
        return {"points": torch.rand(batch, n, 2, generator=g) * masks[..., None], "masks": masks}
    c = config.condition_channels
    if m is Modality.SEM:
        labels = torch.randint(0, c, (batch, size // 16, size // 16), generator=g)
        cond = torch.nn.functional.one_hot(labels, c).permute(0, 3, 1, 2).float()
        cond = torch.nn.functional.interpolate(cond, (size, size), mode="nearest")
    else:
        cond = torch.rand(batch, c, size // 8, size // 8, generator=g) * 2 - 1
        cond = torch.nn.functional.interpolate(cond, (size, size), mode="bilinear")
    return {"condition": cond, "masks": torch.ones(batch, 1)}


def null_grounding(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same inputs with every mask set to 0 (the original's null grounding input)."""
    return {k: torch.zeros_like(v) if k.endswith("masks") else v for k, v in inputs.items()}


@pytest.fixture(scope="session")
def grounding_inputs() -> Callable[..., dict[str, torch.Tensor]]:
    """``grounding_inputs(config, batch=1, size=128, seed=0, n_objects=2)``: see make_grounding_inputs."""
    return make_grounding_inputs
