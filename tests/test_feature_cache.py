"""The feature cache (DeepCache-style reuse of the deep UNet features on plain steps, and on grounded
steps with feature_cache_grounded), end to end on
tiny engine folders exported with --feature-cache: every UNet layout (unet_plain beside unet; one
unet run at gate 0; one gate-skip unet, its fusers behind an If), ORT CPU and OpenVINO against the reference pipeline with the same cache, the plan's
engine calls, and the one-line error on a folder exported without it."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_runtime_support import cache_root, engine_folder, reference, request_for, write_images

from gligen_rt.core.errors import RequestError
from gligen_rt.runtime import GligenPipeline

STEPS = 8
GATES = (0.25, 0.0, 0.75)  # 2 grounded steps, 6 plain ones
K = 3  # plain steps 1 and 4 run a whole UNet, 2, 3, 5, 6 the shallow one
TOL = 4e-4  # of the latents' largest magnitude (ORT / OpenVINO FP32 against PyTorch: ~1e-4)

LAYOUTS = ("two-unets", "single-unet-inpaint", "gate-skip")


@pytest.fixture(scope="module", params=LAYOUTS)
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """(folder, inpaint); the first two are the tiny cache's (the native suite compares on them)."""
    if request.param == "two-unets":
        return engine_folder(tmp_path_factory, "text-box", False, plain=True, feature_cache=True), False
    if request.param == "single-unet-inpaint":
        return engine_folder(tmp_path_factory, "text-box", True, plain=False, feature_cache=True), True
    from gligen_rt.export.api import export_engines

    out = tmp_path_factory.mktemp("feature-cache") / request.param
    export_engines("tiny-random", out, progress=False, gate_skip=True, feature_cache=True)
    return out, False


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_images(tmp_path_factory.mktemp("images"))


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _count_engine_calls(pipe: GligenPipeline) -> Counter[str]:
    """Counts, from now on, the pipeline's engine calls by engine name."""
    calls: Counter[str] = Counter()
    run = pipe.backend.run

    def counting(engine: str, inputs):  # noqa: ANN001, ANN202
        calls[engine] += 1
        return run(engine, inputs)

    pipe.backend.run = counting  # type: ignore[method-assign]
    return calls


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_runtime_with_the_cache_equals_the_reference_with_it(
    case: tuple[Path, bool], backend: str, images: dict[str, str]
) -> None:
    folder, inpaint = case
    ref = reference("text-box", inpaint)
    req = request_for("text-box", inpaint, images, steps=STEPS, alpha_type=GATES)
    cached = dataclasses.replace(req, feature_cache=K)
    want_cached, want_whole = ref(cached).latents, ref(req).latents
    assert _relative(want_cached, want_whole) > 4 * TOL, "the cache changed nothing in the reference"
    with GligenPipeline.from_engines(folder, backend, threads=2) as pipe:
        calls = _count_engine_calls(pipe)
        got_cached = pipe(cached).latents
        shallow, whole = calls["unet_shallow"], calls["unet"] + calls["unet_plain"]
        calls.clear()
        got_whole = pipe(req).latents
        assert calls["unet_shallow"] == 0
    assert (shallow, whole) == (4, 5)  # PLMS: the first step calls the UNet twice
    assert _relative(got_cached, want_cached) < TOL
    assert _relative(got_whole, want_whole) < TOL


GROUNDED_GATES = (0.5, 0.0, 0.5)  # 4 grounded steps, 4 plain ones


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_the_grounded_cache_equals_the_reference_with_it(
    case: tuple[Path, bool], backend: str, images: dict[str, str]
) -> None:
    """feature_cache_grounded 2 with feature_cache 3: grounded steps 1 and 3 run the whole UNet, 2
    and 4 `unet_shallow_grounded` (its fusers on the grounding tokens); the plain steps as before."""
    folder, inpaint = case
    ref = reference("text-box", inpaint)
    req = request_for("text-box", inpaint, images, steps=STEPS, alpha_type=GROUNDED_GATES)
    plain_only = dataclasses.replace(req, feature_cache=K)
    both = dataclasses.replace(plain_only, feature_cache_grounded=2)
    want, want_plain_only = ref(both).latents, ref(plain_only).latents
    assert _relative(want, want_plain_only) > 4 * TOL, "the grounded cache changed nothing in the reference"
    with GligenPipeline.from_engines(folder, backend, threads=2) as pipe:
        calls = _count_engine_calls(pipe)
        got = pipe(both).latents
    # PLMS: the first step calls the UNet twice; grounded 0 (x2), 2 whole, 1, 3 shallow; plain
    # steps 4, 7 whole, 5, 6 shallow
    assert calls["unet_shallow_grounded"] == 2 and calls["unet_shallow"] == 2
    assert calls["unet"] + calls["unet_plain"] == 5
    assert _relative(got, want) < TOL


def test_a_folder_without_the_cache_says_how_to_get_it(
    tmp_path_factory: pytest.TempPathFactory, images: dict[str, str]
) -> None:
    folder = engine_folder(tmp_path_factory, "text-box", False, plain=True)
    req = request_for("text-box", False, images, feature_cache=2)
    with GligenPipeline.from_engines(folder, "ort-cpu", threads=2) as pipe:
        with pytest.raises(RequestError, match="--feature-cache") as e:
            pipe(req)
        assert "\n" not in str(e.value)
        with pytest.raises(RequestError, match="--feature-cache") as e:
            pipe(dataclasses.replace(req, feature_cache=0, feature_cache_grounded=2))
        assert "\n" not in str(e.value)
        assert pipe(dataclasses.replace(req, feature_cache=1)).images.shape[0] == 1  # 1: off


def test_cli_runs_it_on_tiny_random_and_refuses_it_on_a_folder_without(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`generate --model tiny-random --feature-cache K --feature-cache-grounded K` exports the folder
    with the cache; on a folder exported without it the same flags are one line naming the export
    flag, exit 2, no file."""
    from gligen_rt.cli import main

    request = ["--prompt", "a cat", "--phrase", "a cat", "--box", "0.1,0.1,0.6,0.6", "--steps", "6"]
    request += ["--beta", "0.5", "--height", "64", "--width", "64", "--feature-cache", "2"]
    request += ["--feature-cache-grounded", "2"]
    cache = str(cache_root(tmp_path_factory))
    tiny = ["generate", "--model", "tiny-random", "--cache-dir", cache, *request]
    assert main([*tiny, "--out", str(tmp_path / "a.png")]) == 0
    assert (tmp_path / "a.png").is_file()
    capsys.readouterr()
    folder = engine_folder(tmp_path_factory, "text-box", False, plain=True)
    code = main(["generate", "--engines", str(folder), *request, "--out", str(tmp_path / "b.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "--feature-cache" in err, err
    assert not (tmp_path / "b.png").exists()
