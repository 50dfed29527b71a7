"""Engine specs: the engines of every modality, their shapes, and everything derived from them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from gligen_rt.core.config import sd14, tiny_random
from gligen_rt.core.errors import EngineError
from gligen_rt.core.modality import SPATIAL, Modality
from gligen_rt.engines.spec import (
    Envelope,
    ShapeEnvelope,
    TensorSpec,
    concrete_shapes,
    fingerprint,
    is_static,
    onnx_dynamic_axes,
    spec_from_dict,
    spec_to_dict,
    specs_for,
    static,
    trt_profile,
)

PRESETS = {"tiny-random": tiny_random, "sd14": sd14}
CASES = [(p, m.value, False) for p in PRESETS for m in Modality] + [
    (p, m, True) for p in PRESETS for m in ("text-box", "text-image-box")
]


def _config(preset: str, modality: str, inpaint: bool):
    return PRESETS[preset](modality, inpaint)


def _dims(spec, name):
    return spec.tensor(name).dims


@pytest.mark.parametrize("preset,modality,inpaint", CASES)
def test_engine_set_matches_architecture(preset, modality, inpaint):
    cfg = _config(preset, modality, inpaint)
    specs = specs_for(cfg)
    want = ["text_encoder"]
    if cfg.modality is Modality.TEXT_IMAGE_BOX:
        want.append("image_encoder")
    want += ["grounding", "unet", "unet_plain", "vae_decoder"]
    if inpaint:
        want.append("vae_encoder")
    assert list(specs) == want
    assert list(specs_for(cfg, include_plain=False)) == [n for n in want if n != "unet_plain"]
    for name, spec in specs.items():
        assert spec.name == name
        for t in spec.inputs + spec.outputs:
            assert t.dtype == ("int32" if t.name == "input_ids" else "float32")


@pytest.mark.parametrize("preset,modality,inpaint", CASES)
def test_shapes_per_modality(preset, modality, inpaint):
    cfg = _config(preset, modality, inpaint)
    specs = specs_for(cfg)
    d = cfg.context_dim
    m = cfg.modality

    te = specs["text_encoder"]
    assert _dims(te, "input_ids") == ("batch", 77)
    assert _dims(te, "last_hidden_state") == ("batch", 77, d)
    assert _dims(te, "pooled") == ("batch", d)

    g = specs["grounding"]
    n_tokens = {
        Modality.TEXT_BOX: 30,
        Modality.TEXT_IMAGE_BOX: 60,
        Modality.KEYPOINT: 136,
    }.get(m, 64 if preset == "sd14" else cfg.num_tokens)
    assert _dims(g, "tokens") == ("batch", n_tokens, d)
    if m is Modality.TEXT_BOX:
        assert g.input_names == ("boxes", "masks", "phrase_embeddings")
        assert _dims(g, "boxes") == ("batch", 30, 4)
        assert _dims(g, "phrase_embeddings") == ("batch", 30, d)
    elif m is Modality.TEXT_IMAGE_BOX:
        assert g.input_names == (
            "boxes",
            "masks",
            "text_masks",
            "image_masks",
            "phrase_embeddings",
            "image_embeddings",
        )
        s = cfg.image.image_size
        ie = specs["image_encoder"]
        assert _dims(ie, "pixel_values") == ("batch", 3, s, s)
        assert _dims(ie, "image_features") == ("batch", d)
    elif m is Modality.KEYPOINT:
        assert g.input_names == ("points", "masks")
        assert _dims(g, "points") == ("batch", 136, 2)
        assert _dims(g, "masks") == ("batch", 136)
    else:
        cc = 152 if m is Modality.SEM else 3
        assert g.input_names == ("condition", "masks")
        assert _dims(g, "condition") == ("batch", cc, "height", "width")
        assert _dims(g, "masks") == ("batch", 1)
    k = {Modality.HED: 1}.get(m, 8) if m in SPATIAL else (5 if inpaint else 0)
    assert cfg.extra_channels == k
    if m in SPATIAL:
        assert g.output_names == ("tokens", "extra")
        assert _dims(g, "extra") == ("batch", k, "height_latent", "width_latent")
    else:
        assert g.output_names == ("tokens",)

    latent = ("batch", 4, "height_latent", "width_latent")
    unet, plain = specs["unet"], specs["unet_plain"]
    base = ("sample", "timestep", "context")
    assert unet.input_names == base + ("tokens", "gate") + (("extra",) if k else ())
    assert plain.input_names == base + (("extra",) if inpaint else ())
    for spec in (unet, plain):
        assert _dims(spec, "sample") == latent
        assert _dims(spec, "timestep") == (1,)
        assert _dims(spec, "context") == ("batch", 77, d)
        assert spec.output_names == ("eps",) and _dims(spec, "eps") == latent
    assert _dims(unet, "tokens") == ("batch", n_tokens, d)
    assert _dims(unet, "gate") == (1,)
    if k:
        assert _dims(unet, "extra") == ("batch", k, "height_latent", "width_latent")

    vd = specs["vae_decoder"]
    assert _dims(vd, "latents") == latent
    assert _dims(vd, "images") == ("batch", 3, "height", "width")
    if inpaint:
        ve = specs["vae_encoder"]
        assert _dims(ve, "images") == ("batch", 3, "height", "width")
        assert ve.output_names == ("mean", "std")
        assert _dims(ve, "mean") == latent


def test_batch_ranges_follow_cfg():
    env = ShapeEnvelope(batch=(1, 2, 4), height=(256, 512, 768), width=(256, 512, 768))
    specs = specs_for(sd14("text-image-box"), env)
    assert specs["unet"].envelope.batch == (1, 4, 8)  # CFG batch 2 x images
    assert specs["grounding"].envelope.batch == (1, 4, 8)
    assert specs["vae_decoder"].envelope.batch == (1, 2, 4)
    assert specs["text_encoder"].envelope.batch == (1, 4, 120)  # up to 30 phrases per image
    assert specs["image_encoder"].envelope.batch == (1, 2, 120)
    assert specs["text_encoder"].envelope.height is None


def test_trt_profile_and_dynamic_axes():
    env = ShapeEnvelope(batch=(1, 1, 2), height=(256, 512, 1024), width=(320, 512, 768))
    spec = specs_for(sd14("canny"), env)["unet"]
    prof = trt_profile(spec)
    assert list(prof) == list(spec.input_names)
    assert prof["sample"] == ((1, 4, 32, 40), (2, 4, 64, 64), (4, 4, 128, 96))
    assert prof["extra"] == ((1, 8, 32, 40), (2, 8, 64, 64), (4, 8, 128, 96))
    assert prof["context"] == ((1, 77, 768), (2, 77, 768), (4, 77, 768))
    assert prof["timestep"] == ((1,), (1,), (1,))
    axes = onnx_dynamic_axes(spec)
    assert axes["sample"] == {0: "batch", 2: "height_latent", 3: "width_latent"}
    assert axes["eps"] == {0: "batch", 2: "height_latent", 3: "width_latent"}
    assert axes["tokens"] == {0: "batch"}
    assert "timestep" not in axes and "gate" not in axes
    g = specs_for(sd14("canny"), env)["grounding"]
    assert onnx_dynamic_axes(g)["condition"] == {0: "batch", 2: "height", 3: "width"}
    assert trt_profile(g)["condition"][2] == (4, 3, 1024, 768)


def test_concrete_shapes_and_envelope_errors():
    spec = specs_for(tiny_random("hed"))["unet"]  # tiny: height/width (64, 128, 192)
    shapes = concrete_shapes(spec, 2, 128, 192)
    assert shapes["sample"] == (2, 4, 16, 24)
    assert shapes["extra"] == (2, 1, 16, 24)
    assert shapes["eps"] == (2, 4, 16, 24)
    for bad in [(9, 128, 128), (2, 256, 128), (2, 96, 128)]:
        with pytest.raises(EngineError) as e:
            concrete_shapes(spec, *bad)
        assert "\n" not in str(e.value) and "envelope" in str(e.value)
    te = specs_for(tiny_random("hed"))["text_encoder"]
    assert concrete_shapes(te, 3, 0, 0) == {
        "input_ids": (3, 77),
        "last_hidden_state": (3, 77, 32),
        "pooled": (3, 32),
    }


def test_static_spec():
    spec = specs_for(tiny_random())["unet"]
    assert not is_static(spec)
    st = static(spec, 2, 128, 64)
    assert is_static(st)
    assert onnx_dynamic_axes(st) == {}
    assert trt_profile(st)["sample"] == ((2, 4, 16, 8),) * 3
    assert fingerprint(st) != fingerprint(spec)
    with pytest.raises(EngineError):
        static(spec, 2, 1024, 64)


def test_fingerprint_stable_and_sensitive():
    a = specs_for(sd14("keypoint"))["unet"]
    b = specs_for(sd14("keypoint"))["unet"]
    assert fingerprint(a) == fingerprint(b)
    assert len(fingerprint(a)) == 64 and int(fingerprint(a), 16) >= 0
    assert spec_from_dict(spec_to_dict(a)) == a
    assert fingerprint(spec_from_dict(spec_to_dict(a))) == fingerprint(a)
    # One dim changed.
    ctx = a.tensor("context")
    changed = dataclasses.replace(
        a,
        inputs=tuple(dataclasses.replace(t, dims=("batch", 77, 1024)) if t is ctx else t for t in a.inputs),
    )
    assert fingerprint(changed) != fingerprint(a)
    # Envelope changed.
    wider = specs_for(sd14("keypoint"), ShapeEnvelope(batch=(1, 1, 8)))["unet"]
    assert fingerprint(wider) != fingerprint(a)
    # Dtype changed.
    t0 = a.inputs[0]
    dt = dataclasses.replace(a, inputs=(dataclasses.replace(t0, dtype="int32"),) + a.inputs[1:])
    assert fingerprint(dt) != fingerprint(a)
    # Different models differ; the text encoder does not depend on the image size envelope.
    assert fingerprint(specs_for(tiny_random("keypoint"))["unet"]) != fingerprint(a)
    te1 = specs_for(sd14(), ShapeEnvelope(height=(256, 512, 1024)))["text_encoder"]
    assert fingerprint(te1) == fingerprint(specs_for(sd14())["text_encoder"])


def test_envelope_validation():
    with pytest.raises(ValueError):
        ShapeEnvelope(height=(256, 500, 768))  # not a multiple of 64
    with pytest.raises(ValueError):
        ShapeEnvelope(batch=(2, 1, 4))
    with pytest.raises(ValueError):
        Envelope(batch=(0, 1, 1))
    with pytest.raises(ValueError):
        TensorSpec("x", "float16", ("batch",))
    with pytest.raises(ValueError):
        TensorSpec("x", "float32", ("2B",))
    env = ShapeEnvelope.for_config(sd14())
    assert env.height == (256, 512, 768) and env.batch == (1, 1, 4)
    assert ShapeEnvelope.for_config(tiny_random()).height == (64, 128, 192)
    assert ShapeEnvelope.from_dict(env.to_dict()) == env


def test_engines_package_imports_no_torch():
    code = (
        "import sys\n"
        "import gligen_rt.engines.spec, gligen_rt.engines.manifest, gligen_rt.engines.tensorrt\n"
        "import gligen_rt.engines.ort, gligen_rt.engines.openvino, gligen_rt.engines.build\n"
        "bad = [m for m in ('torch', 'tensorrt', 'tensorrt_rtx', 'onnxruntime', 'openvino', 'onnx')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
