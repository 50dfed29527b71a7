"""--low-memory: staged encoders and VAE, tiled VAE decoding (ORT CPU; every backend takes the same
path: the pipeline calls the backend's load / release / run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_runtime_support import engine_folder, psnr

from gligen_rt.core.imageio import to_uint8
from gligen_rt.core.request import GenerationRequest, GroundedObject
from gligen_rt.engines.spec import TEXT_ENCODER, UNET, UNET_PLAIN, VAE_DECODER
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
