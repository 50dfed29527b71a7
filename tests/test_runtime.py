"""The runtime's promises on the tiny text-box engines (ORT CPU unless named): API, timings, batch,
samplers, determinism, single-UNet mode, thread-safety, the tiny cache, the CLI, and one-line errors
for every bad input (nothing written, non-zero exit)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from test_runtime_support import (
    SIZE,
    STEPS,
    cache_root,
    engine_folder,
    psnr,
    reference,
    request_for,
    write_images,
)

from gligen_rt.core.errors import BackendUnavailable, EngineError, GligenError, NumericalError, RequestError
from gligen_rt.core.noise import NoiseStream
from gligen_rt.runtime import GligenPipeline, make_backend


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return engine_folder(tmp_path_factory, "text-box", False, plain=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def pipe(folder: Path):
    with GligenPipeline.from_engines(folder, "ort-cpu", threads=2) as p:
        yield p


@pytest.fixture(scope="module")
def ref():
    return reference("text-box")


def _one_line(e: BaseException) -> None:
    assert "\n" not in str(e) and str(e), f"not one line: {e!r}"


# ---- no torch -------------------------------------------------------------------------------------


def test_runtime_imports_no_torch(folder: Path, images: dict[str, str]) -> None:
    """A fresh interpreter imports gligen_rt.runtime, generates on ORT CPU, and never loads torch,
    diffusers or transformers."""
    code = textwrap.dedent(
        f"""
        import sys
        from gligen_rt.runtime import GligenPipeline
        from gligen_rt.core.request import GenerationRequest, GroundedObject
        pipe = GligenPipeline.from_engines({str(folder)!r}, "ort-cpu", threads=1)
        req = GenerationRequest(prompt="a cat", objects=(GroundedObject((0.1, 0.1, 0.6, 0.6), "a cat"),),
                                steps=2, height={SIZE}, width={SIZE})
        assert pipe(req).images.shape == (1, {SIZE}, {SIZE}, 3)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers"))
        print("HEAVY", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout, out.stdout


# ---- results ----------------------------------------------------------------------------------------


def test_result_and_timings(pipe: GligenPipeline, images: dict[str, str]) -> None:
    calls: list[tuple[int, int]] = []
    result = pipe(request_for("text-box", False, images), on_step=lambda i, n: calls.append((i, n)))
    assert result.images.shape == (1, SIZE, SIZE, 3) and result.images.dtype == np.uint8
    assert result.latents.shape == (1, 4, SIZE // 8, SIZE // 8) and result.latents.dtype == np.float32
    assert calls == [(i, STEPS) for i in range(STEPS)]
    t = result.timings
    for key in (
        "text_encoder",
        "image_encoder",
        "grounding",
        "denoise",
        "unet",
        "vae_decoder",
        "engines",
        "total",
    ):
        assert t[key] >= 0.0, key
    assert len(result.step_times) == STEPS
    assert t["engines"] <= t["total"] and t["unet"] <= t["denoise"] + 1e-6
    assert t["overhead"] == pytest.approx(t["total"] - t["engines"])
    assert pipe.engines == ("text_encoder", "grounding", "unet", "unet_plain", "vae_decoder")


def test_seed_and_noise_are_deterministic(pipe: GligenPipeline, images: dict[str, str]) -> None:
    req = request_for("text-box", False, images)
    a, b = pipe(req).images, pipe(req).images
    assert np.array_equal(a, b)
    assert not np.array_equal(a, pipe(dataclasses.replace(req, seed=req.seed + 1)).images)
    noise = NoiseStream(req.seed).latents((1, 4, SIZE // 8, SIZE // 8))
    assert np.array_equal(a, pipe(req, noise=noise).images)


def test_batch_samplers_and_unguided_match_reference(
    pipe: GligenPipeline, ref, images: dict[str, str]
) -> None:
    base = request_for("text-box", False, images)
    cases = {
        "batch of 2": dataclasses.replace(base, num_images=2),
        "ddim": dataclasses.replace(base, sampler="ddim"),
        "euler, beta": dataclasses.replace(base, sampler="euler", alpha_type=None, beta=0.5),
        "dpmpp_2m": dataclasses.replace(base, sampler="dpmpp_2m"),
        "unguided": dataclasses.replace(base, guidance=1.0),
    }
    for name, req in cases.items():
        got, want = pipe(req).images, ref(req).images
        assert got.shape == want.shape == (req.num_images, SIZE, SIZE, 3)
        assert psnr(got, want) >= 45.0, name
    two = pipe(cases["batch of 2"]).images
    assert not np.array_equal(two[0], two[1])


def test_single_unet_gives_the_same_image(folder: Path, pipe: GligenPipeline, images: dict[str, str]) -> None:
    """Gate-0 steps on `unet` with gate 0 instead of `unet_plain`: one engine, same image."""
    req = request_for("text-box", False, images)
    with GligenPipeline.from_engines(folder, "ort-cpu", single_unet=True, threads=2) as single:
        assert "unet_plain" not in single.engines
        assert psnr(single(req).images, pipe(req).images) >= 45.0


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_threads_give_the_sequential_images(folder: Path, images: dict[str, str], backend: str) -> None:
    """A pipeline is safe to call from several threads: two threads with different seeds give the
    images that sequential calls give."""
    reqs = [request_for("text-box", False, images, seed=s) for s in (1, 2)]
    with GligenPipeline.from_engines(folder, backend, threads=1) as p:
        sequential = [p(r).images for r in reqs]
        results: list = [None, None]
        errors: list = []

        def work(i: int) -> None:
            try:
                for _ in range(2):
                    results[i] = p(reqs[i]).images
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    for got, want in zip(results, sequential):
        assert np.array_equal(got, want)


def test_tiny_reuses_the_cached_folder(
    tmp_path_factory: pytest.TempPathFactory, folder: Path, monkeypatch
) -> None:
    import gligen_rt.export.api as api

    def no_export(*a, **k):
        raise AssertionError("the tiny engines were exported again")

    monkeypatch.setattr(api, "export_engines", no_export)
    with GligenPipeline.tiny_random(
        "text-box", backend="ort-cpu", cache_dir=cache_root(tmp_path_factory)
    ) as p:
        assert p.folder.path == folder


# ---- bad inputs: one line, GligenError -------------------------------------------------------------


def _copy(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "engines"
    shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("ort-*", "openvino", "tensorrt*"))
    return dst


def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def test_missing_engines(folder: Path, tmp_path: Path) -> None:
    broken = _copy(folder, tmp_path)
    (broken / "unet.onnx").unlink()
    with pytest.raises(EngineError, match="unet.onnx is missing") as e:
        GligenPipeline.from_engines(broken, "ort-cpu")
    _one_line(e.value)
    m = json.loads((broken / "manifest.json").read_text())
    _edit_json(broken / "manifest.json", engines=[n for n in m["engines"] if n != "unet"])
    with pytest.raises(EngineError, match="lacks the engines unet") as e:
        GligenPipeline.from_engines(broken, "ort-cpu")
    _one_line(e.value)
    with pytest.raises(EngineError, match="does not exist") as e:
        GligenPipeline.from_engines(tmp_path / "nowhere", "ort-cpu")


def test_folder_of_another_model_or_shape(folder: Path, tmp_path: Path) -> None:
    other = _copy(folder, tmp_path)
    m = json.loads((other / "unet.json").read_text())
    _edit_json(other / "unet.json", model_config={**m["model_config"], "modality": "keypoint"})
    with pytest.raises(EngineError, match="another model") as e:
        GligenPipeline.from_engines(other, "ort-cpu")
    _one_line(e.value)
    shutil.rmtree(other)
    other = _copy(folder, tmp_path)  # manifest.json says another envelope than the graphs were made for
    _edit_json(
        other / "manifest.json",
        envelope={"batch": [1, 1, 2], "height": [64, 128, 256], "width": [64, 128, 256]},
    )
    with pytest.raises(EngineError, match="spec") as e:
        GligenPipeline.from_engines(other, "ort-cpu")
    _one_line(e.value)
    shutil.rmtree(other)
    other = _copy(folder, tmp_path)  # a graph whose bytes changed
    with open(other / "vae_decoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(EngineError, match="corrupt") as e:
        GligenPipeline.from_engines(other, "ort-cpu")
    _one_line(e.value)


def test_sizes_outside_the_envelope(pipe: GligenPipeline, images: dict[str, str]) -> None:
    req = request_for("text-box", False, images)
    for changes in ({"height": 256}, {"width": 32}, {"height": 100}, {"num_images": 5}):
        with pytest.raises(GligenError) as e:
            pipe(dataclasses.replace(req, **changes))
        _one_line(e.value)


def test_unreadable_images_and_maps(tmp_path: Path, images: dict[str, str]) -> None:
    """Reference image, condition map, image to inpaint: an unreadable file is one RequestError
    line before any engine runs (runtime/inputs.py)."""
    from gligen_rt.core.config import tiny_random
    from gligen_rt.runtime.inputs import read_inputs

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    cases = [
        (
            "text-image-box",
            False,
            {"objects": (request_for("text-image-box", False, images).objects[0],), "style_image": str(bad)},
        ),
        ("hed", False, {"condition": str(bad)}),
        ("text-box", True, {"inpaint_image": str(bad)}),
    ]
    for modality, inpaint, changes in cases:
        req = request_for(modality, inpaint, images, **changes)
        with pytest.raises(RequestError, match="bad.png") as e:
            read_inputs(req, tiny_random(modality, inpaint), SIZE, SIZE)
        _one_line(e.value)


def test_nan_latents_are_reported(pipe: GligenPipeline, images: dict[str, str]) -> None:
    req = request_for("text-box", False, images)
    with pytest.raises(NumericalError, match="NaN") as e:
        pipe(req, noise=np.full((1, 4, SIZE // 8, SIZE // 8), np.nan, np.float32))
    _one_line(e.value)
    with pytest.raises(RequestError):
        pipe(req, noise=np.zeros((1, 4, 3, 3), np.float32))


def test_gpu_backends_unavailable_here_are_one_line() -> None:
    """Without a GPU (or CuPy / TensorRT), GPU backends fail at creation with one line."""
    for name in ("ort-cuda", "ort-trt", "tensorrt"):
        try:
            backend = make_backend(name)
        except BackendUnavailable as e:
            _one_line(e)
        else:  # a GPU machine: nothing to check here
            backend.close()
    with pytest.raises(GligenError):
        make_backend("no-such-backend")


# ---- command line ------------------------------------------------------------------------------------


def _cli(args: list[str]) -> int:
    from gligen_rt.cli import main

    return main(args)


def test_cli_generate_on_engines(folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.png"
    args = [
        "generate",
        "--engines",
        str(folder),
        "--backend",
        "ort-cpu",
        "--prompt",
        "a cat",
        "--phrase",
        "a cat",
        "--box",
        "0.1,0.1,0.6,0.6",
        "--steps",
        "2",
        "--height",
        "64",
        "--width",
        "64",
        "--out",
        str(out),
        "--overlay",
    ]
    assert _cli(args) == 0
    assert out.is_file() and (tmp_path / "out_overlay.png").is_file()
    bad = tmp_path / "bad.png"
    assert _cli([*args[:-3], "--height", "512", "--out", str(bad)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and not bad.exists()


def test_cli_generate_tiny_and_missing_engines(
    tmp_path_factory, folder: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("GLIGEN_RT_CACHE", str(cache_root(tmp_path_factory)))
    out = tmp_path / "tiny.png"
    common = [
        "--prompt",
        "a cat",
        "--phrase",
        "a cat",
        "--box",
        "0.1,0.1,0.6,0.6",
        "--steps",
        "2",
        "--height",
        "64",
        "--width",
        "64",
    ]
    assert (
        _cli(["generate", "--model", "tiny-random", "--backend", "ort-cpu", *common, "--out", str(out)]) == 0
    )
    assert out.is_file()
    capsys.readouterr()
    missing = tmp_path / "missing.png"
    assert (
        _cli(
            [
                "generate",
                "--engines",
                str(tmp_path / "none"),
                "--backend",
                "ort-cpu",
                *common,
                "--out",
                str(missing),
            ]
        )
        != 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and not missing.exists()


def test_inspect(folder: Path, capsys) -> None:
    import argparse

    from gligen_rt.runtime.cli import register_inspect

    parser = argparse.ArgumentParser()
    register_inspect(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["inspect", str(folder)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    for needle in (
        "tiny-random",
        "text-box",
        "fp32",
        "unet_plain",
        "in  sample",
        "out eps",
        "parity",
        "envelope",
        "weights",
        "peak with --low-memory",
    ):
        assert needle in text, needle
