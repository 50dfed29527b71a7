"""--low-memory: staged encoders and VAE, tiled VAE decoding (ORT CPU; every backend takes the same
path: the pipeline calls the backend's load / release / run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from test_runtime_support import engine_folder, psnr

from gligen_rt.core.imageio import to_uint8
from gligen_rt.core.request import GenerationRequest, GroundedObject
from gligen_rt.engines.spec import GROUNDING, TEXT_ENCODER, UNET, UNET_PLAIN, VAE_DECODER
from gligen_rt.runtime import GligenPipeline
from gligen_rt.runtime.tiles import tile_starts


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return engine_folder(tmp_path_factory, "text-box", False, plain=True)


def test_tile_starts_cover_with_overlap() -> None:
    assert tile_starts(8, 8, 2) == [0]
    assert tile_starts(24, 8, 2) == [0, 6, 12, 16]
    for size, tile, overlap in ((24, 8, 2), (17, 8, 3), (100, 64, 16)):
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tiled_decode_matches_the_untiled_one(folder: Path) -> None:
    """A 192x192 image decoded as 64x64 px tiles (16 px overlaps) against one decoder call; a latent
    of one tile is decoded exactly as untiled."""
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((1, 4, 24, 24)).astype(np.float32)
    with GligenPipeline.from_engines(folder, "ort-cpu", threads=1) as pipe:
        whole = pipe.decode(latents)
        pipe.vae_tile = 8
        tiled = pipe.decode(latents)
        one_tile = pipe.decode(latents[:, :, :8, :8])
        pipe.vae_tile = None
        exact = pipe.decode(latents[:, :, :8, :8])
    assert tiled.shape == whole.shape == (1, 3, 192, 192)
    assert np.array_equal(one_tile, exact)
    value = psnr(to_uint8(tiled), to_uint8(whole))
    print(f"tiled vs untiled VAE decode (tiny random VAE, 64 px tiles, 16 px overlap): PSNR {value:.1f} dB")
    assert value >= 20.0


def test_low_memory_gives_the_same_image_and_keeps_only_the_unets(folder: Path) -> None:
    request = GenerationRequest(
        prompt="a room", objects=(GroundedObject((0.1, 0.2, 0.5, 0.6), "a cat"),), seed=2, steps=3
    )
    with GligenPipeline.from_engines(folder, "ort-cpu", threads=1) as pipe:
        expected = pipe(request)
    with GligenPipeline.from_engines(folder, "ort-cpu", threads=1, low_memory=True) as pipe:
        assert set(pipe.engines) == set(expected_engines := pipe.folder.specs)
        resident = set(pipe.backend.specs)
        assert {UNET, UNET_PLAIN} <= resident and not {TEXT_ENCODER, VAE_DECODER} & resident
        result = pipe(request)
        assert set(pipe.backend.specs) == resident  # staged engines were released again
    assert set(expected_engines) >= {TEXT_ENCODER, VAE_DECODER}
    assert np.array_equal(result.images, expected.images)  # 128 px: one VAE tile, exact


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_low_memory_trims_the_unets_before_the_vae_and_the_next_request_is_unchanged(folder: Path) -> None:
    """OpenVINO: --low-memory frees the resident engines' intermediate buffers (CompiledModel
    release_memory) after the last UNet step and before the VAE decodes; the next request allocates
    them again and gives the same image as a pipeline that never trims."""
    request = GenerationRequest(
        prompt="a room", objects=(GroundedObject((0.1, 0.2, 0.5, 0.6), "a cat"),), seed=3, steps=3
    )
    with GligenPipeline.from_engines(folder, "openvino", threads=1) as pipe:
        expected = pipe(request)
    with GligenPipeline.from_engines(folder, "openvino", threads=1, low_memory=True) as pipe:
        backend = pipe.backend
        events: list[tuple[str, tuple[str, ...]]] = []
        run, trim = backend.run, backend.trim
        backend.run = lambda e, x: (events.append(("run", (e,))), run(e, x))[1]  # type: ignore[method-assign]
        backend.trim = lambda es: (events.append(("trim", tuple(es))), trim(es))[1]  # type: ignore[method-assign]
        first, second = pipe(request), pipe(request)
    assert np.array_equal(first.images, expected.images) and np.array_equal(second.images, expected.images)
    for start in (0, len(events) // 2):  # each request: every UNet step, then the trim, then the VAE
        request_events = events[start : start + len(events) // 2]
        kinds = [k for k, _ in request_events]
        trim_at = kinds.index("trim")
        assert set(request_events[trim_at][1]) == {UNET, UNET_PLAIN, GROUNDING}
        assert request_events[trim_at + 1] == ("run", (VAE_DECODER,))
        assert all(e[1][0] != UNET and e[1][0] != UNET_PLAIN for e in request_events[trim_at + 1 :])
