"""Token downsampling at the UNet's first level (gligen_ref/token_downsample.py, `export
--token-downsample`): exact where it must be (a grid whose pooled patches are constant, the fused
fuser against the reference fuser, the model restored after), an approximation elsewhere, and the
runtime on an exported folder equal to the reference run with it, on ORT and OpenVINO."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_runtime_support import reference, request_for, write_images

from gligen_ref.token_downsample import first_level_transformers, token_downsampled
from gligen_rt.export.fuse import fuse_fusers

TOL = 4e-4  # of the latents' largest magnitude (ORT / OpenVINO FP32 against PyTorch: ~1e-4)


def _rel(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _block_inputs(model, h: int, w: int, constant_patches: bool):  # noqa: ANN001, ANN202
    """(x (2, C, h, w), context, gligen kwargs) for the first level's first Transformer2DModel."""
    g = torch.Generator().manual_seed(3)
    c = model.config.unet.block_out_channels[0]
    if constant_patches:  # every 2x2 patch one value: pooling loses nothing
        x = F.interpolate(torch.randn(2, c, h // 2, w // 2, generator=g), scale_factor=2, mode="nearest")
    else:
        x = torch.randn(2, c, h, w, generator=g)
    d = model.config.context_dim
    context = torch.randn(2, 77, d, generator=g)
    objs = (torch.randn(2, 30, d, generator=g), torch.tensor(1.0))
    return x, context, {"gligen": {"objs": objs}}


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
def test_a_grid_of_constant_patches_loses_nothing(tiny_model, fused: bool) -> None:
    """When every pooled patch holds one token four times, pooled keys with the log(4) logit bias are
    exactly the keys they replace: the first level's block (self-attention and fuser, its grounding
    tokens included) gives what it gives without downsampling. Without the bias the fuser would
    under-weight the visual keys against the grounding tokens and this would fail."""
    model = tiny_model()
    net = fuse_fusers(model) if fused else model
    block = first_level_transformers(net.unet)[0]
    x, context, kwargs = _block_inputs(model, 8, 12, constant_patches=True)
    with torch.no_grad():
        want = block(x, encoder_hidden_states=context, cross_attention_kwargs=kwargs, return_dict=False)[0]
        with token_downsampled(net, 2):
            got = block(x, encoder_hidden_states=context, cross_attention_kwargs=kwargs, return_dict=False)[0]
            x2, _, _ = _block_inputs(model, 8, 12, constant_patches=False)
            rough = block(
                x2, encoder_hidden_states=context, cross_attention_kwargs=kwargs, return_dict=False
            )[0]
        whole = block(x2, encoder_hidden_states=context, cross_attention_kwargs=kwargs, return_dict=False)[0]
    assert _rel(got, want) < 1e-5
    assert _rel(rough, whole) > 1e-3, "on a rough grid it is an approximation"


def test_it_changes_the_unet_the_fused_copy_agrees_and_the_model_is_restored(tiny_model) -> None:
    """A non-square latent (8x16): the grounded UNet changes under downsampling, the fused copy made
    inside the ``with`` (export's order) matches the reference fuser, and leaving restores the model."""
    model = tiny_model()
    g = torch.Generator().manual_seed(5)
    d = model.config.context_dim
    x, ctx = torch.randn(2, 4, 8, 16, generator=g), torch.randn(2, 77, d, generator=g)
    tokens, gate, t = torch.randn(2, 30, d, generator=g), torch.tensor(0.7), torch.tensor(400.0)
    with torch.no_grad():
        before = model.unet_grounded(x, t, ctx, tokens, gate)
        with token_downsampled(model, 2):
            ref = model.unet_grounded(x, t, ctx, tokens, gate)
            fused = fuse_fusers(model).unet_grounded(x, t, ctx, tokens, gate)
            plain = model.unet_plain(x, t, ctx)
        after = model.unet_grounded(x, t, ctx, tokens, gate)
        plain_before = model.unet_plain(x, t, ctx)
    assert _rel(ref, before) > 1e-3 and _rel(plain, plain_before) > 1e-3
    assert _rel(fused, ref) < 1e-5
    assert torch.equal(after, before)


def test_factors_outside_the_choices_are_refused(tiny_model) -> None:
    with pytest.raises(ValueError, match=r"\(1, 2, 4\)"):
        with token_downsampled(tiny_model(), 3):
            pass


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-random exported as the benchmark's fastest CPU layout: gate skip, feature cache, factor 2."""
    from gligen_rt.export.api import export_engines

    out = tmp_path_factory.mktemp("token-downsample") / "engines"
    return export_engines(
        "tiny-random", out, progress=False, gate_skip=True, feature_cache=True, token_downsample=2
    )


def test_the_manifest_records_it(folder: Path) -> None:
    assert json.loads((folder / "manifest.json").read_text())["token_downsample"] == 2


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_runtime_on_the_folder_equals_the_reference_with_it(
    folder: Path, backend: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """64x128 px (an 8x16 first level), both feature caches on: the runtime equals the reference
    pipeline run inside ``token_downsampled(model, 2)``, and both differ from the reference without."""
    from gligen_rt.runtime import GligenPipeline

    images = write_images(tmp_path_factory.mktemp("images"))
    ref = reference("text-box")
    req = request_for("text-box", False, images, steps=6, width=128, alpha_type=(0.5, 0.0, 0.5))
    req = dataclasses.replace(req, feature_cache=2, feature_cache_grounded=2)
    whole = ref(req).latents
    with token_downsampled(ref.model, 2):
        want = ref(req).latents
    with GligenPipeline.from_engines(folder, backend, threads=2) as pipe:
        got = pipe(req).latents
    assert _rel(want, whole) > 4 * TOL, "downsampling changed nothing in the reference"
    assert _rel(got, want) < TOL


def test_the_export_cli_refuses_another_factor_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gligen_rt.cli import main

    with pytest.raises(SystemExit) as e:
        main(["export", "--model", "tiny-random", "--out", str(tmp_path / "x"), "--token-downsample", "3"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "--token-downsample" in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_openvino_still_fuses_every_attention(folder: Path) -> None:
    """The pooled self-attention and the fuser's attention with its bias Add stay one fused kernel
    each on OpenVINO's CPU plugin (f32 dynamic, bf16 static): `unet_shallow_grounded` holds the
    first level's 5 blocks x (self, cross, gated)."""
    from gligen_rt.engines.openvino import attention_fusions, compile_model

    onnx = folder / "unet_shallow_grounded.onnx"
    shapes = {
        "sample": (2, 4, 8, 16),
        "timestep": (1,),
        "context": (2, 77, 32),
        "tokens": (2, 30, 32),
        "gate": (1,),
        "deep": (2, 32, 8, 16),
    }
    for hint, shp in (("f32", None), ("bf16", shapes)):
        total, fused = attention_fusions(onnx, compile_model(onnx, "CPU", hint, shapes=shp))
        assert total == 15 and fused == total, (hint, total, fused)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx is not installed")
def test_the_pooled_fp16_unets_build_in_tensorrt_rtx(tmp_path: Path) -> None:
    """The GPU path: the pooled graphs (AveragePool on the token grid, the fusers' bias Add) exported
    FP16 strongly typed parse and build in TensorRT-RTX's builder (no GPU needed), over a dynamic
    size range; running the plans needs a GPU (test_export_trt_rtx.py runs plans where one exists)."""
    from gligen_rt.engines import manifest as M
    from gligen_rt.engines import spec as S
    from gligen_rt.engines.build import build
    from gligen_rt.export.api import export_engines

    envelope = S.ShapeEnvelope(batch=(1, 1, 2), height=(64, 128, 192), width=(64, 128, 192))
    names = ["unet", "unet_shallow_grounded"]
    folder = export_engines(
        "tiny-random",
        tmp_path / "fp16",
        "fp16",
        envelope=envelope,
        progress=False,
        gate_skip=True,
        feature_cache=True,
        token_downsample=2,
        engines=names,
    )
    plans = build(folder, "tensorrt-rtx", progress=False)
    assert sorted(p.name.split(".")[0] for p in plans) == names
    for plan in plans:
        m = M.load_manifest(M.manifest_path_for(plan))
        assert plan.stat().st_size > 0 and m.precision == "fp16"
