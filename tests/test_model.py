"""The assembled GLIGENModel: parity with diffusers' gated UNet, and grounding that matters in every
modality (tiny random models with non-zero gates, latents 16x16, CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers.models.attention import GatedSelfAttentionDense
from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

from gligen_ref.model import GLIGENModel, build_model, build_unet
from gligen_rt.core.config import ModelConfig, tiny_random
from gligen_rt.core.modality import Modality

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-5
EFFECT = 1e-4  # 'differs': well above float noise; grounding moves eps by ~1e-3..1e-2 of ~0.25
LATENT = 16
ALL_CONFIGS = [(m, False) for m in Modality] + [(Modality.TEXT_BOX, True), (Modality.TEXT_IMAGE_BOX, True)]


def _ids(c: tuple[Modality, bool]) -> str:
    return ("inpaint-" if c[1] else "") + c[0].value


def _unet_inputs(config: ModelConfig, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    extra = None
    if config.inpaint:
        mask = torch.ones(batch, 1, LATENT, LATENT)
        mask[:, :, 4:10, 3:12] = 0
        extra = torch.cat([torch.randn(batch, 4, LATENT, LATENT, generator=g) * mask, mask], dim=1)
    return {
        "sample": torch.randn(batch, 4, LATENT, LATENT, generator=g),
        "timestep": torch.tensor(421.0),
        "context": torch.randn(batch, config.text.max_position_embeddings, config.context_dim, generator=g),
        "extra": extra,
    }


def _grounded(model: GLIGENModel, inputs: dict, grounding: dict, gate: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        tokens, extra = model.grounding_tokens(**grounding)
        extra = extra if extra is not None else inputs["extra"]
        return model.unet_grounded(
            inputs["sample"], inputs["timestep"], inputs["context"], tokens, torch.tensor(gate), extra
        )


# ---- parity with diffusers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "modality,inpaint", [("text-box", False), ("text-image-box", False), ("text-box", True)]
)
def test_unet_equals_diffusers_gated_unet(modality: str, inpaint: bool, grounding_inputs) -> None:
    """Same weights -> our grounded UNet == diffusers' UNet2DConditionModel(attention_type="gated") with its
    own fusers and position_net (gate 1), and == diffusers with fusers disabled (gate 0)."""
    config = tiny_random(modality, inpaint)
    config = dataclasses.replace(config, grounding=dataclasses.replace(config.grounding, mlp_hidden=512))
    model = build_model(config, seed=3)
    ref = build_unet(config).eval()
    feature_type = "text-image" if config.modality is Modality.TEXT_IMAGE_BOX else "text-only"
    ref.position_net = GLIGENTextBoundingboxProjection(config.context_dim, config.context_dim, feature_type)
    state = {k.removeprefix("unet."): v for k, v in model.state_dict().items() if k.startswith("unet.")}
    state.update({f"conv_in.{k}": v for k, v in model.conv_in.state_dict().items()})
    state.update({f"position_net.{k}": v for k, v in model.position_net.state_dict().items()})
    ref.load_state_dict(state, strict=True)

    inputs = _unet_inputs(config)
    grounding = grounding_inputs(config, batch=2, n_objects=3)
    if feature_type == "text-only":
        gligen = {
            "boxes": grounding["boxes"],
            "masks": grounding["masks"],
            "positive_embeddings": grounding["phrase_embeddings"],
        }
    else:
        gligen = {
            "boxes": grounding["boxes"],
            "masks": grounding["masks"],
            "phrases_masks": grounding["text_masks"],
            "image_masks": grounding["image_masks"],
            "phrases_embeddings": grounding["phrase_embeddings"],
            "image_embeddings": grounding["image_embeddings"],
        }
    sample = inputs["sample"] if not inpaint else torch.cat([inputs["sample"], inputs["extra"]], dim=1)
    with torch.no_grad():
        expected = ref(
            sample, inputs["timestep"], inputs["context"], cross_attention_kwargs={"gligen": gligen}
        ).sample
        plain = ref(sample, inputs["timestep"], inputs["context"]).sample
        for m in ref.modules():
            if isinstance(m, GatedSelfAttentionDense):
                m.enabled = False
        disabled = ref(
            sample, inputs["timestep"], inputs["context"], cross_attention_kwargs={"gligen": gligen}
        ).sample
        ours_plain = model.unet_plain(
            inputs["sample"], inputs["timestep"], inputs["context"], inputs["extra"]
        )
    assert (expected - plain).abs().max() > EFFECT  # the fusers do something
    assert (_grounded(model, inputs, grounding) - expected).abs().max() < TOL
    assert (_grounded(model, inputs, grounding, gate=0.0) - disabled).abs().max() < TOL
    assert (ours_plain - plain).abs().max() < TOL


# ---- every modality: grounding changes the output ------------------------------------------------


@pytest.mark.parametrize("modality,inpaint", ALL_CONFIGS, ids=[_ids(c) for c in ALL_CONFIGS])
def test_grounding_matters(modality: Modality, inpaint: bool, tiny_model, grounding_inputs) -> None:
    model = tiny_model(modality, inpaint)
    config = model.config
    inputs = _unet_inputs(config)
    grounding = grounding_inputs(config, batch=2, size=LATENT * 8)
    with torch.no_grad():
        tokens, extra = model.grounding_tokens(**grounding)
    assert tokens.shape == (2, config.num_tokens, config.context_dim) and tokens.dtype == torch.float32
    if modality.is_spatial:
        assert extra is not None and extra.shape == (2, config.extra_channels, LATENT, LATENT)
    else:
        assert extra is None

    eps = _grounded(model, inputs, grounding)
    assert eps.shape == (2, 4, LATENT, LATENT) and torch.isfinite(eps).all()
    null = {k: torch.zeros_like(v) if k.endswith("masks") else v for k, v in grounding.items()}
    assert (eps - _grounded(model, inputs, null)).abs().max() > EFFECT
    eps_off = _grounded(model, inputs, grounding, gate=0.0)
    assert (eps - eps_off).abs().max() > EFFECT
    with torch.no_grad():
        plain = model.unet_plain(
            inputs["sample"], inputs["timestep"], inputs["context"], inputs["extra"] if inpaint else extra
        )
    # gate 0 == plain SD (spatial: SD's conv_in, the downsampler map ignored; inpaint: 9-channel conv_in)
    assert (eps_off - plain).abs().max() < TOL


@pytest.mark.parametrize("modality", [Modality.HED, Modality.SEM])
def test_spatial_gate_selects_conv_in(modality: Modality, tiny_model, grounding_inputs) -> None:
    """Where gate == 0 the spatial model uses SD's conv_in (the condition map is ignored)."""
    model = tiny_model(modality)
    inputs = _unet_inputs(model.config)
    a = grounding_inputs(model.config, batch=2, size=LATENT * 8, seed=1)
    b = grounding_inputs(model.config, batch=2, size=LATENT * 8, seed=2)
    assert (_grounded(model, inputs, a, 0.5) - _grounded(model, inputs, b, 0.5)).abs().max() > EFFECT
    assert torch.equal(_grounded(model, inputs, a, 0.0), _grounded(model, inputs, b, 0.0))


BOX_CONFIGS = [c for c in ALL_CONFIGS if c[0].is_box]


@pytest.mark.parametrize("modality,inpaint", BOX_CONFIGS, ids=[_ids(c) for c in BOX_CONFIGS])
def test_box_position_reaches_output(modality: Modality, inpaint: bool, tiny_model, grounding_inputs) -> None:
    """Moving a real box changes its token(s) only, and the output; moving a padded box changes nothing.

    (Where on the latent the output changes is learned: a random GLIGEN has no box-to-location
    mapping, so this test does not check locality.)
    """
    model = tiny_model(modality, inpaint)
    inputs = _unet_inputs(model.config)
    grounding = grounding_inputs(model.config, batch=2, n_objects=2)

    def moved(slot: int) -> dict[str, torch.Tensor]:
        boxes = grounding["boxes"].clone()
        boxes[:, slot] = torch.tensor([0.6, 0.55, 0.95, 0.9])
        return {**grounding, "boxes": boxes}

    with torch.no_grad():
        tok0, _ = model.grounding_tokens(**grounding)
        tok1, _ = model.grounding_tokens(**moved(0))
        tok_pad, _ = model.grounding_tokens(**moved(5))
    changed = (tok0 - tok1).abs().amax(dim=(0, 2)) > 0
    expected = [0] if modality is Modality.TEXT_BOX else [0, 30]
    assert changed.nonzero().flatten().tolist() == expected
    assert torch.equal(tok0, tok_pad)
    assert (_grounded(model, inputs, grounding) - _grounded(model, inputs, moved(0))).abs().max() > EFFECT


# ---- engines' contracts --------------------------------------------------------------------------


def test_timestep_shapes_agree(tiny_model, grounding_inputs) -> None:
    model = tiny_model()
    inputs = _unet_inputs(model.config)
    grounding = grounding_inputs(model.config, batch=2)
    ref = _grounded(model, inputs, grounding)
    for t in (torch.tensor([421.0]), torch.tensor([421.0, 421.0])):
        assert torch.equal(_grounded(model, {**inputs, "timestep": t}, grounding), ref)


def test_encoders_and_vae(tiny_model) -> None:
    model = tiny_model(Modality.TEXT_IMAGE_BOX)
    config = model.config
    ids = torch.full((2, 77), config.text.eos_token_id, dtype=torch.int64)
    ids[:, 0] = config.text.bos_token_id
    ids[0, 1:4] = torch.tensor([320, 1125, 539])
    with torch.no_grad():
        hidden, pooled = model.encode_text(ids)
        hidden32, _ = model.encode_text(ids.int())  # the engine's int32 token ids
        image = model.encode_images(torch.randn(3, 3, config.image.image_size, config.image.image_size))
        mean, std = model.vae_encode(torch.rand(1, 3, 64, 48) * 2 - 1)
        decoded = model.vae_decode(mean)
    assert torch.equal(hidden32, hidden)
    assert hidden.shape == (2, 77, config.context_dim) and pooled.shape == (2, config.context_dim)
    assert torch.equal(pooled[0], hidden[0, 4]) and torch.equal(pooled[1], hidden[1, 1])  # first EOS
    assert image.shape == (3, config.context_dim)
    assert torch.allclose(image.norm(dim=-1), torch.full((3,), 28.7))
    assert mean.shape == std.shape == (1, 4, 8, 6) and (std > 0).all()
    assert decoded.shape == (1, 3, 64, 48)


def test_build_model_is_deterministic_and_not_identity() -> None:
    config = tiny_random(Modality.KEYPOINT)
    rng_before = torch.random.get_rng_state()
    a, b = build_model(config, seed=0).state_dict(), build_model(config, seed=0).state_dict()
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = build_model(config, seed=1).state_dict()
    assert not torch.equal(a["conv_in.weight"], c["conv_in.weight"])
    alphas = [v for k, v in a.items() if k.endswith(("alpha_attn", "alpha_dense"))]
    assert len(alphas) == 32 and all(v.dim() == 0 and 0.2 <= v.item() <= 0.8 for v in alphas)
    for k in ("null_person_feature", "null_xy_feature", "person_embeddings", "keypoint_embeddings"):
        assert a[f"position_net.{k}"].abs().min() > 0 or a[f"position_net.{k}"].any()


def test_model_is_float32_eval(tiny_model) -> None:
    model = tiny_model(Modality.CANNY)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.unet.conv_in.__class__.__name__ == "Identity"
    assert model.sd_conv_in is not None and model.conv_in.in_channels == 12


# ---- the feature cache ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "modality,inpaint",
    [(Modality.TEXT_BOX, False), (Modality.HED, False), (Modality.TEXT_BOX, True)],
    ids=["text-box", "hed", "inpaint-text-box"],
)
def test_unet_shallow_on_its_own_deep_is_unet_plain(modality: Modality, inpaint: bool, tiny_model) -> None:
    """DeepCache's identity: the shallow UNet fed the deep features of the same inputs gives the
    plain UNet's eps exactly; the grounded UNet at gate 0 gives the same deep features; deep
    features of another step change eps (so the cache is not a no-op)."""
    model = tiny_model(modality, inpaint)
    x = _unet_inputs(model.config)
    later = _unet_inputs(model.config, seed=1)
    with torch.no_grad():
        plain = model.unet_plain(x["sample"], x["timestep"], x["context"], x["extra"])
        eps, deep = model.unet_plain(x["sample"], x["timestep"], x["context"], x["extra"], return_deep=True)
        shallow = model.unet_shallow(x["sample"], x["timestep"], x["context"], deep, x["extra"])
        _, deep_other = model.unet_plain(
            later["sample"], torch.tensor(521.0), x["context"], x["extra"], return_deep=True
        )
        reused = model.unet_shallow(x["sample"], x["timestep"], x["context"], deep_other, x["extra"])
        tokens = torch.randn(2, model.config.num_tokens, model.config.context_dim)
        grounded_extra = (
            torch.randn(2, model.config.extra_channels, LATENT, LATENT) if modality.is_spatial else x["extra"]
        )
        _, deep_gate0 = model.unet_grounded(
            x["sample"], x["timestep"], x["context"], tokens, torch.tensor(0.0), grounded_extra, True
        )
    c1 = model.config.unet.block_out_channels[1]
    assert deep.shape == (2, c1, LATENT, LATENT)
    assert torch.equal(eps, plain)
    assert torch.equal(shallow, plain)
    torch.testing.assert_close(deep_gate0, deep, atol=TOL, rtol=TOL)
    assert (reused - plain).abs().max() > EFFECT


@pytest.mark.parametrize(
    "modality,inpaint",
    [(Modality.TEXT_BOX, False), (Modality.HED, False), (Modality.TEXT_BOX, True)],
    ids=["text-box", "hed", "inpaint-text-box"],
)
def test_unet_shallow_grounded_on_its_own_deep_is_unet_grounded(
    modality: Modality, inpaint: bool, tiny_model
) -> None:
    """The same identity on the grounded steps: fed the deep features of the same grounded inputs,
    the shallow grounded UNet gives the grounded UNet's eps exactly; its first and last levels' fusers
    run (their tokens and gate change eps); other deep features change eps."""
    model = tiny_model(modality, inpaint)
    x = _unet_inputs(model.config)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, model.config.num_tokens, model.config.context_dim, generator=g)
    extra = (
        torch.randn(2, model.config.extra_channels, LATENT, LATENT, generator=g)
        if modality.is_spatial
        else x["extra"]
    )
    gate = torch.tensor([1.0])
    args = (x["sample"], x["timestep"], x["context"])
    with torch.no_grad():
        whole = model.unet_grounded(*args, tokens, gate, extra)
        eps, deep = model.unet_grounded(*args, tokens, gate, extra, True)
        shallow = model.unet_shallow_grounded(*args, tokens, gate, deep, extra)
        other_tokens = model.unet_shallow_grounded(*args, torch.zeros_like(tokens), gate, deep, extra)
        gate_zero = model.unet_shallow_grounded(*args, tokens, torch.tensor([0.0]), deep, extra)
        _, deep_other = model.unet_grounded(
            _unet_inputs(model.config, seed=1)["sample"],
            torch.tensor(521.0),
            x["context"],
            tokens,
            gate,
            extra,
            True,
        )
        reused = model.unet_shallow_grounded(*args, tokens, gate, deep_other, extra)
    assert torch.equal(eps, whole)
    assert torch.equal(shallow, whole)
    assert (other_tokens - whole).abs().max() > EFFECT
    assert (gate_zero - whole).abs().max() > EFFECT
    assert (reused - whole).abs().max() > EFFECT
