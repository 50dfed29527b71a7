"""GLIGEN's own modules against diffusers and against hand-computed formulas (tiny sizes, CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import GatedSelfAttentionDense
from diffusers.models.embeddings import GLIGENTextBoundingboxProjection, get_fourier_embeds_from_boundingbox

from gligen_ref.convnext import ConvNeXt, LayerNorm2d
from gligen_ref.downsampler import GroundingDownsampler
from gligen_ref.fourier import FourierEmbedder
from gligen_ref.fuser import GatedSelfAttention
from gligen_ref.position_net import KeypointNet, SpatialNet, TextBoxNet, TextImageBoxNet
from gligen_rt.core.modality import CONDITION_CHANNELS, DOWNSAMPLER_OUT_CHANNELS, SPATIAL, Modality

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-5


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Give every zero-initialised parameter (null features, embeddings, alphas, norm biases) random
    values N(0, 0.5^2) and ConvNeXt layer scales 0.3, keeping the default init elsewhere."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.3)
            elif not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


# ---- Fourier -----------------------------------------------------------------------------------


def test_fourier_equals_diffusers_and_layout() -> None:
    boxes = torch.rand(2, 30, 4)
    ours = FourierEmbedder(8, 100.0)(boxes)
    assert ours.shape == (2, 30, 64) and ours.dtype == torch.float32
    assert torch.equal(ours, get_fourier_embeds_from_boundingbox(8, boxes))
    # layout k*2*C + s*C + c, frequencies 100^(k/8), no 2*pi
    k, s, c = 5, 1, 2
    f = 100.0 ** (k / 8)
    assert ours[1, 3, k * 8 + s * 4 + c].item() == pytest.approx(
        torch.cos(f * boxes[1, 3, c]).item(), abs=1e-6
    )
    points = FourierEmbedder()(torch.rand(2, 136, 2))
    assert points.shape == (2, 136, 32)


def test_fourier_is_float32_for_half_inputs() -> None:
    boxes = torch.rand(1, 30, 4).half()
    out = FourierEmbedder()(boxes)
    assert out.dtype == torch.float32
    assert torch.equal(out, FourierEmbedder()(boxes.float()))


# ---- fuser -------------------------------------------------------------------------------------


def _fuser_pair() -> tuple[GatedSelfAttention, GatedSelfAttentionDense]:
    ours = GatedSelfAttention(query_dim=32, context_dim=24, n_heads=4, d_head=8)
    _randomize(ours, 0)
    ref = GatedSelfAttentionDense(32, 24, 4, 8)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours.eval(), ref.eval()


def test_fuser_equals_diffusers_at_gate_one() -> None:
    ours, ref = _fuser_pair()
    x, objs = torch.randn(2, 50, 32), torch.randn(2, 30, 24)
    with torch.no_grad():
        expected = ref(x, objs)
        for gate in (torch.tensor(1.0), torch.tensor([1.0])):
            got = ours(x, (objs, gate))
            assert (got - expected).abs().max() < TOL
        assert (expected - x).abs().max() > 1e-2  # alphas are non-zero: not an identity


def test_fuser_gate_zero_is_identity_and_half_scales() -> None:
    ours, _ = _fuser_pair()
    x, objs = torch.randn(2, 50, 32), torch.randn(2, 30, 24)
    with torch.no_grad():
        assert torch.equal(ours(x, (objs, torch.tensor(0.0))), x)
        got = ours(x, (objs, torch.tensor(0.5)))
        # the spec's formula, written out with plain ops
        g = ours.linear(objs)
        h = F.layer_norm(torch.cat([x, g], 1), (32,), ours.norm1.weight, ours.norm1.bias)
        q, k, v = (
            lin(h).reshape(2, 80, 4, 8).transpose(1, 2)
            for lin in (ours.attn.to_q, ours.attn.to_k, ours.attn.to_v)
        )
        att = torch.softmax(q @ k.transpose(-1, -2) * 8**-0.5, dim=-1) @ v
        a = ours.attn.to_out[0](att.transpose(1, 2).reshape(2, 80, 32))[:, :50]
        x1 = x + 0.5 * torch.tanh(ours.alpha_attn) * a
        val, gt = (
            ours.ff.net[0].proj(F.layer_norm(x1, (32,), ours.norm2.weight, ours.norm2.bias)).chunk(2, -1)
        )
        ff = ours.ff.net[2](val * 0.5 * gt * (1 + torch.erf(gt / 2**0.5)))
        expected = x1 + 0.5 * torch.tanh(ours.alpha_dense) * ff
    assert (got - expected).abs().max() < TOL


def test_fuser_parameter_names() -> None:
    names = set(GatedSelfAttention(32, 24, 4, 8).state_dict())
    assert names == set(GatedSelfAttentionDense(32, 24, 4, 8).state_dict())
    assert GatedSelfAttention(32, 24, 4, 8).alpha_attn.dim() == 0


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_fuser_exports_to_onnx_opset18(dynamo: bool, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Wrap(torch.nn.Module):
        def __init__(self, fuser: GatedSelfAttention) -> None:
            super().__init__()
            self.fuser = fuser

        def forward(self, x: torch.Tensor, tokens: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
            return self.fuser(x, (tokens, gate))

    ours, _ = _fuser_pair()
    args = (torch.randn(2, 50, 32), torch.randn(2, 30, 24), torch.tensor([0.7]))
    path = tmp_path / "fuser.onnx"
    names = {"input_names": ["x", "tokens", "gate"], "output_names": ["y"]}
    if dynamo:
        dims = {
            "x": {0: torch.export.Dim("B"), 1: torch.export.Dim("N")},
            "tokens": {0: torch.export.Dim("B")},
            "gate": None,
        }
        torch.onnx.export(Wrap(ours), args, dynamo=True, opset_version=18, dynamic_shapes=dims, **names).save(
            path
        )
    else:
        axes = {"x": {0: "B", 1: "N"}, "tokens": {0: "B"}}
        torch.onnx.export(Wrap(ours), args, path, dynamo=False, opset_version=18, dynamic_axes=axes, **names)
    onnx.checker.check_model(onnx.load(path))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x, tokens = torch.randn(3, 70, 32), torch.randn(3, 30, 24)  # other batch and token count than traced
    got = sess.run(None, {"x": x.numpy(), "tokens": tokens.numpy(), "gate": args[2].numpy()})[0]
    with torch.no_grad():
        assert abs(got - Wrap(ours)(x, tokens, args[2]).numpy()).max() < TOL


# ---- box tokenizers ----------------------------------------------------------------------------


def _box_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(2, 30, generator=g) > 0.5).float()
    return {
        "boxes": torch.rand(2, 30, 4, generator=g),
        "masks": masks,
        "text_masks": masks * (torch.rand(2, 30, generator=g) > 0.3).float(),
        "image_masks": masks * (torch.rand(2, 30, generator=g) > 0.3).float(),
        "phrase_embeddings": torch.randn(2, 30, 32, generator=g),
        "image_embeddings": torch.randn(2, 30, 32, generator=g),
    }


def test_text_box_net_equals_diffusers() -> None:
    ours = TextBoxNet(32, 32, hidden=512)
    _randomize(ours, 1)
    ref = GLIGENTextBoundingboxProjection(positive_len=32, out_dim=32, feature_type="text-only")
    ref.load_state_dict(ours.state_dict(), strict=True)
    i = _box_inputs()
    with torch.no_grad():
        got = ours(i["boxes"], i["masks"], i["phrase_embeddings"])
        expected = ref(boxes=i["boxes"], masks=i["masks"], positive_embeddings=i["phrase_embeddings"])
    assert got.shape == (2, 30, 32)
    assert (got - expected).abs().max() < TOL


def test_text_image_box_net_equals_diffusers() -> None:
    ours = TextImageBoxNet(32, 32, hidden=512)
    _randomize(ours, 2)
    ref = GLIGENTextBoundingboxProjection(positive_len=32, out_dim=32, feature_type="text-image")
    ref.load_state_dict(ours.state_dict(), strict=True)
    i = _box_inputs()
    with torch.no_grad():
        got = ours(**i)
        expected = ref(
            boxes=i["boxes"],
            masks=i["masks"],
            phrases_masks=i["text_masks"],
            image_masks=i["image_masks"],
            phrases_embeddings=i["phrase_embeddings"],
            image_embeddings=i["image_embeddings"],
        )
    assert got.shape == (2, 60, 32)
    assert (got - expected).abs().max() < TOL


# ---- keypoints ---------------------------------------------------------------------------------


def test_keypoint_net_shapes_and_null_blending() -> None:
    net = KeypointNet(out_dim=32, hidden=64).eval()
    _randomize(net, 3)
    assert set(net.state_dict()) >= {
        "person_embeddings",
        "keypoint_embeddings",
        "null_person_feature",
        "null_xy_feature",
    }
    assert net.person_embeddings.shape == (8, 32) and net.keypoint_embeddings.shape == (17, 32)
    points = torch.rand(2, 136, 2)
    masks = torch.ones(2, 136)
    masks[0, 40] = 0  # person 2, keypoint 6 missing
    with torch.no_grad():
        out = net(points, masks)
        null = net.linears(torch.cat([net.null_person_feature, net.null_xy_feature]))
        p, j = divmod(41, 17)
        real = net.linears(
            torch.cat(
                [net.person_embeddings[p] + net.keypoint_embeddings[j], FourierEmbedder()(points[0, 41])]
            )
        )
    assert out.shape == (2, 136, 32)
    assert (out[0, 40] - null).abs().max() < TOL
    assert (out[0, 41] - real).abs().max() < TOL


# ---- spatial -----------------------------------------------------------------------------------


def test_convnext_shapes_and_key_names() -> None:
    net = ConvNeXt(3, dims=(8, 16, 32, 64), depths=(1, 1, 2, 1))
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 64, 2, 2)
    keys = set(net.state_dict())
    for k in (
        "downsample_layers.0.0.weight",
        "downsample_layers.0.1.weight",
        "downsample_layers.3.0.bias",
        "downsample_layers.3.1.weight",
        "stages.2.1.dwconv.weight",
        "stages.2.1.norm.weight",
        "stages.2.1.pwconv1.weight",
        "stages.2.1.pwconv2.bias",
        "stages.2.1.gamma",
    ):
        assert k in keys, k
    full = ConvNeXt()  # ConvNeXt-T: 27.8M parameters without the head
    assert sum(p.numel() for p in full.parameters()) == 27_818_592
    ln = LayerNorm2d(8)
    _randomize(ln, 4)
    x = torch.randn(2, 8, 5, 5)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (8,), ln.weight, ln.bias, 1e-6).permute(0, 3, 1, 2)
    assert (ln(x) - ref).abs().max() < TOL


@pytest.mark.parametrize("in_channels", [3, 152])
def test_spatial_net_shapes_and_null_blending(in_channels: int) -> None:
    net = SpatialNet(
        in_channels,
        32,
        hidden=64,
        resize_input=64,
        convnext_dims=(8, 16, 32, 64),
        convnext_depths=(1, 1, 1, 1),
    )
    _randomize(net, 5)
    net.eval()
    assert (net.in_conv is not None) == (in_channels == 152)
    assert net.pos_embedding.shape == (1, 4, 64) and net.null_feature.shape == (64,)
    cond = torch.randn(2, in_channels, 128, 128)
    masks = torch.tensor([[1.0], [0.0]])
    with torch.no_grad():
        out = net(cond, masks)
        null = net.linears(net.null_feature + net.pos_embedding[0])  # (4, 32): independent of the condition
        x = F.interpolate(cond[:1], (64, 64))
        x = net.in_conv(x) if net.in_conv is not None else x
        real = net.linears(net.convnext_tiny_backbone(x).flatten(2).transpose(1, 2) + net.pos_embedding)
    assert out.shape == (2, 4, 32)
    assert (out[1] - null).abs().max() < TOL
    assert (out[0] - real[0]).abs().max() < TOL


@pytest.mark.parametrize("modality", SPATIAL)
def test_downsampler_shapes(modality: Modality) -> None:
    net = GroundingDownsampler(modality, latent_factor=8)
    cond = torch.rand(2, CONDITION_CHANNELS[modality], 128, 96) * 2 - 1
    assert net(cond).shape == (2, DOWNSAMPLER_OUT_CHANNELS[modality], 16, 12)
    keys = set(net.state_dict())
    if modality is Modality.HED:
        assert keys == set()
    else:
        assert keys == {"layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"}


@pytest.mark.parametrize("modality", [Modality.HED, Modality.CANNY, Modality.NORMAL])
def test_downsampler_equals_original_at_512(modality: Modality) -> None:
    net = GroundingDownsampler(modality)
    cond = torch.rand(1, 3, 512, 512) * 2 - 1
    with torch.no_grad():
        if modality is Modality.HED:
            expected = F.interpolate(cond[:, 0].unsqueeze(1), (64, 64), mode="bicubic")
        else:
            x = cond[:, 0].unsqueeze(1) if modality is Modality.CANNY else cond
            expected = net.layers(F.interpolate(x, (256, 256), mode="bicubic"))
        assert torch.equal(net(cond), expected)
