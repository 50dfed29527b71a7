"""The exporter: engine folders of tiny random GLIGENs (gates non-zero), checked on ONNX Runtime CPU.

Covers: spec vs graph I/O for every engine, parity per engine (FP32 and FP16), the fused gated
attention (equal to the reference, fewer nodes, the MatMul-Softmax-MatMul pattern, the opset-23
Attention form), FP16 safety (FP32 islands, FP32 grounding, FP32 I/O), atomicity (interrupted or
failed exports write nothing), the CLI.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch

from gligen_ref.fuser import GatedSelfAttention
from gligen_rt.cli import main as cli_main
from gligen_rt.core.config import tiny_random
from gligen_rt.core.modality import Modality
from gligen_rt.engines import manifest as M
from gligen_rt.engines import spec as S
from gligen_rt.export import onnx_export
from gligen_rt.export.api import export_engines
from gligen_rt.export.fp16 import fp32_cone
from gligen_rt.export.fuse import SDPA, FusedGatedSelfAttention, count_fusers, fuse_fusers
from gligen_rt.export.graph import check_io
from gligen_rt.export.inputs import make_inputs
from gligen_rt.export.parity import ExportError, ParityError, ort_session, rel_error
from gligen_rt.export.wrappers import run_wrapper, wrap

ENVELOPE = S.ShapeEnvelope(batch=(1, 1, 2), height=(64, 128, 192), width=(64, 128, 192))
SMALL_DATA = 4 << 20  # external data above 4 MiB: the tiny UNets and text encoder use .onnx.data


def _export(tmp: Path, name: str, **kw) -> Path:
    # One thread: on a small shared CI machine two-thread kernels mostly wait on each other.
    return export_engines(
        "tiny-random",
        tmp / name,
        envelope=ENVELOPE,
        progress=False,
        external_data_min_bytes=SMALL_DATA,
        threads=1,
        **kw,
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Engine folders that together hold every engine kind (exported once per module)."""
    tmp = tmp_path_factory.mktemp("export")
    return {
        "tb32": _export(tmp, "tb32", count_unfused=True),
        "tb16": _export(
            tmp, "tb16", precision="fp16", engines=["text_encoder", "grounding", "unet", "vae_decoder"]
        ),
        # image encoder, VAE encoder, the inpainting plain UNet with its 9-channel conv_in and `extra`,
        # and the feature cache's unet_shallow and unet_shallow_grounded (the plain UNet then also
        # outputs `deep`)
        "tib-inpaint": _export(
            tmp,
            "tib",
            modality="text-image-box",
            inpaint=True,
            engines=[
                "image_encoder",
                "grounding",
                "unet_plain",
                "unet_shallow",
                "unet_shallow_grounded",
                "vae_encoder",
            ],
            feature_cache=True,
        ),
        # spatial: grounding with `extra`, condition in pixels, the UNet with `extra` switching
        # conv_in at gate 0
        "hed": _export(tmp, "hed", modality="hed", engines=["grounding", "unet"]),
    }


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """PyTorch on one thread in this module's own reference runs (see `_export`)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _engines(folders: dict[str, Path]) -> list[tuple[str, str]]:
    return [(key, name) for key, d in folders.items() for name in M.load_folder_manifest(d).engines]


def _config_of(folder: Path):
    from gligen_rt.core.config import from_dict

    return from_dict(M.load_folder_manifest(folder).model_config)


# ---------------------------------------------------------------------------------------------
# Spec vs graph, manifests


def test_every_engine_kind_is_exported(folders: dict[str, Path]):
    assert {name for _, name in _engines(folders)} == set(S.ENGINE_NAMES)


def test_spec_matches_graph_io(folders: dict[str, Path]):
    for key, name in _engines(folders):
        d = folders[key]
        config = _config_of(d)
        manifest = M.load_folder_manifest(d)
        env = S.ShapeEnvelope.from_dict(manifest.envelope)
        spec = S.specs_for(config, env, feature_cache=S.UNET_SHALLOW in manifest.engines)[name]
        graph = onnx.load(str(d / f"{name}.onnx"), load_external_data=False)
        assert check_io(graph, spec) == [], (key, name)
        sess = ort_session(d / f"{name}.onnx", 1)
        assert [i.name for i in sess.get_inputs()] == list(spec.input_names)
        assert [o.name for o in sess.get_outputs()] == list(spec.output_names)
        for got, want in zip(sess.get_inputs(), spec.inputs):
            assert got.type == {"float32": "tensor(float)", "int32": "tensor(int32)"}[want.dtype], (name, got)
            assert list(got.shape) == list(want.dims), (name, got.shape)
        for got in sess.get_outputs():
            assert got.type == "tensor(float)", (name, got)  # float32 boundary at every precision
        manifest = M.load_manifest(d / f"{name}.json")
        M.verify(manifest, spec=spec, artifact_path=d / f"{name}.onnx")  # fingerprint, size, sha256
        assert manifest.spec == S.spec_to_dict(spec)


def test_folder_manifest_and_tokenizer(folders: dict[str, Path]):
    from gligen_rt.core.tokenizer import ClipTokenizer

    d = folders["tb32"]
    folder = M.load_folder_manifest(d)
    assert folder.precision == "fp32" and folder.extra["flavor"] == "fp32" and folder.extra["fused"]
    assert folder.engines == ("text_encoder", "grounding", "unet", "unet_plain", "vae_decoder")  # all
    assert set(folder.parity) == set(folder.engines)
    assert folder.model_config["modality"] == "text-box"
    tok = ClipTokenizer.from_folder(d / "tokenizer")
    assert tok.encode(["a photo of a cat"])[0][:7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    # weights above the threshold live in <engine>.onnx.data; the manifest covers both files
    assert (d / "unet.onnx.data").is_file() and not (d / "grounding.onnx.data").exists()
    # nothing but the engine files: no temporary folders left behind
    assert not [p for p in d.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert not [p for p in d.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# Parity


def test_parity_fp32_recorded_and_reproduced(folders: dict[str, Path]):
    for key, name in _engines(folders):
        d = folders[key]
        if M.load_folder_manifest(d).precision != "fp32":
            continue
        parity = M.load_manifest(d / f"{name}.json").parity
        assert parity["max_rel_err"] < 1e-4 and parity["tolerance"] == 1e-4, (key, name, parity)
        assert parity["cases"] >= 2
    # Independently, at a point of our own: the grounded UNet, gate 0.5, non-square, batch 2.
    d = folders["tb32"]
    config = _config_of(d)
    spec = S.specs_for(config, ENVELOPE)[S.UNET]
    inputs = make_inputs(spec, config, 2, 128, 192, seed=7, gate=0.5, timestep=999.0)
    model = _reference(config)
    want = run_wrapper(wrap(model, spec), inputs)["eps"].numpy()
    got = ort_session(d / "unet.onnx", 1).run(None, inputs)[0]
    assert rel_error(got, want)[0] < 1e-4
    # grounded really differs from ungrounded (the gates are non-zero)
    plain = ort_session(d / "unet_plain.onnx", 1).run(
        None, {k: inputs[k] for k in ("sample", "timestep", "context")}
    )
    assert rel_error(plain[0], want)[0] > 1e-2


def test_parity_fp16(folders: dict[str, Path]):
    d = folders["tb16"]
    folder = M.load_folder_manifest(d)
    assert folder.precision == "fp16" and folder.extra["flavor"] == "fp16-strongly-typed"
    for name in folder.engines:
        m = M.load_manifest(d / f"{name}.json")
        if name == S.GROUNDING:
            assert (m.precision, m.flavor) == ("fp32", "fp32")
            assert m.parity["max_rel_err"] < 1e-4
        else:
            assert (m.precision, m.flavor) == ("fp16", "fp16-strongly-typed")
            assert 0 < m.parity["max_rel_err"] < 2e-2, (name, m.parity)


def _elem_types(path: Path) -> tuple[onnx.ModelProto, dict[str, int]]:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return model, types


def test_fp16_graphs_are_safe(folders: dict[str, Path]):
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    d = folders["tb16"]
    model, types = _elem_types(d / "unet.onnx")
    nodes = list(model.graph.node)
    assert sum(types.get(n.output[0]) == fp16 for n in nodes if n.op_type == "MatMul") > 100  # really FP16
    for n in nodes:
        if n.op_type in ("LayerNormalization", "InstanceNormalization", "Sin", "Cos"):
            assert types[n.input[0]] == fp32 and types[n.output[0]] == fp32, n.name
    region = fp32_cone(model.graph, "timestep")
    assert {"/unet/time_proj/Mul", "/unet/time_proj/Sin", "/unet/time_proj/Cos"} <= region
    # the timestep input itself is never rounded to FP16 (FP16's spacing at 999 is 0.5)
    consumers = [n for n in nodes if "timestep" in n.input]
    assert consumers and all(n.name in region and n.op_type != "Cast" for n in consumers), consumers
    for n in nodes:
        if n.name in region and n.op_type != "Constant":
            assert all(types.get(o) == fp32 for o in n.output if o in types), n.name
    # the grounding engine is not converted at all
    _, gtypes = _elem_types(d / "grounding.onnx")
    assert fp16 not in gtypes.values()


def test_fp16_flag_flavor_keeps_fp32_graphs(tmp_path: Path):
    d = _export(
        tmp_path, "flag", precision="fp16", fp16_flavor="fp16-flag", engines=["grounding", "vae_decoder"]
    )
    folder = M.load_folder_manifest(d)
    assert folder.precision == "fp16" and folder.extra["flavor"] == "fp32-fp16-flag"
    vae = M.load_manifest(d / "vae_decoder.json")
    assert (vae.precision, vae.flavor) == ("fp32", "fp32-fp16-flag") and vae.parity["max_rel_err"] < 1e-4
    assert M.load_manifest(d / "grounding.json").flavor == "fp32"  # never built with the FP16 flag
    _, types = _elem_types(d / "vae_decoder.onnx")
    assert onnx.TensorProto.FLOAT16 not in types.values()


# ---------------------------------------------------------------------------------------------
# Fused gated attention


def _reference(config):
    from gligen_ref.model import build_model

    return build_model(config, 0)


def test_fused_equals_reference_and_leaves_it_untouched(tiny_model: Callable):
    model = tiny_model("text-box")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_fusers(model)
    assert count_fusers(model) == (16, 0) and count_fusers(fused) == (0, 16)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert fused.unet.conv_out.weight is model.unet.conv_out.weight  # shared, not copied
    g = torch.Generator().manual_seed(3)
    sample, context = torch.randn(2, 4, 16, 24, generator=g), torch.randn(2, 77, 32, generator=g)
    tokens, t = torch.randn(2, 30, 32, generator=g), torch.tensor([420.0])
    fused_sdpa = fuse_fusers(model, SDPA)
    with torch.no_grad():
        for gate in (1.0, 0.5, 0.0):
            want = model.unet_grounded(sample, t, context, tokens, torch.tensor([gate]))
            for m in (fused, fused_sdpa):
                got = m.unet_grounded(sample, t, context, tokens, torch.tensor([gate]))
                assert rel_error(got.numpy(), want.numpy())[0] < 1e-5, gate
            if gate:
                plain = model.unet_plain(sample, t, context)
                assert rel_error(plain.numpy(), want.numpy())[0] > 1e-2


def test_fused_graph_has_fewer_nodes_and_the_attention_pattern(folders: dict[str, Path]):
    d = folders["tb32"]
    builder = M.load_manifest(d / "unet.json").builder
    assert builder["fused"] and builder["fusers"] == 16
    assert builder["nodes"] < builder["nodes_unfused"] - 16 * 20, builder  # >= 20 nodes fewer per fuser
    graph = onnx.load(str(d / "unet.onnx"), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    patterns = 0
    for n in graph.node:
        if n.op_type == "Softmax" and "/fuser/" in n.name:
            before, after = producer[n.input[0]], consumers[n.output[0]]
            assert before.op_type == "MatMul" and [a.op_type for a in after] == ["MatMul"], n.name
            # q (B, h, Nv, d) @ k^T (B, h, d, N): both straight from a Transpose, the scale folded into W_q
            assert [producer[i].op_type for i in before.input] == ["Transpose", "Transpose"], n.name
            patterns += 1
    assert patterns == 16
    assert not [n for n in graph.node if n.op_type == "Tanh"]  # tanh(alpha) folded into the weights


def test_fused_fuser_exports_as_opset23_attention(tmp_path: Path):
    torch.manual_seed(0)
    fuser = GatedSelfAttention(32, 24, 8, 4).eval()
    with torch.no_grad():
        fuser.alpha_attn.fill_(0.5)
        fuser.alpha_dense.fill_(0.7)

    class Fuser(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor, tokens: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
            return self.m(x, (tokens, gate))

    spec = S.EngineSpec(
        "fuser",
        (
            S.TensorSpec("x", "float32", ("batch", 64, 32)),
            S.TensorSpec("tokens", "float32", ("batch", 30, 24)),
            S.TensorSpec("gate", "float32", (1,)),
        ),
        (S.TensorSpec("y", "float32", ("batch", 64, 32)),),
        S.Envelope(batch=(1, 2, 4)),
    )
    x, tokens, gate = torch.randn(2, 64, 32), torch.randn(2, 30, 24), torch.tensor([0.5])
    path = tmp_path / "fuser.onnx"
    onnx_export.torch_export(
        Fuser(FusedGatedSelfAttention(fuser, SDPA)), spec, path, {"x": x, "tokens": tokens, "gate": gate}, 23
    )
    graph = onnx.load(str(path))
    assert [n.op_type for n in graph.graph.node].count("Attention") == 1
    x3, t3 = torch.randn(3, 64, 32), torch.randn(3, 30, 24)
    got = ort_session(path, 1).run(None, {"x": x3.numpy(), "tokens": t3.numpy(), "gate": gate.numpy()})[0]
    with torch.no_grad():
        want = fuser(x3, (t3, gate)).numpy()
    assert rel_error(got, want)[0] < 1e-5


# ---------------------------------------------------------------------------------------------
# Atomicity and failures


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp" in p.name or ".old-" in p.name]


def test_interrupted_export_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "engines"
    original = onnx_export.check_parity
    calls = []

    def interrupt(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:  # the second engine: the first one is already complete in the temp folder
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "check_parity", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _export(tmp_path, "engines", engines=["grounding", "vae_decoder"])
    assert not out.exists() and _leftovers(tmp_path) == []
    # An existing engine folder survives an interrupted re-export unchanged.
    monkeypatch.setattr(onnx_export, "check_parity", original)
    _export(tmp_path, "engines", engines=["grounding"])
    snapshot = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    calls.clear()
    monkeypatch.setattr(onnx_export, "check_parity", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _export(tmp_path, "engines", engines=["grounding", "vae_decoder"])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == snapshot
    assert _leftovers(tmp_path) == []


def test_failed_parity_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(onnx_export.TOLERANCE, "fp32", 0.0)
    with pytest.raises(ParityError) as e:
        _export(tmp_path, "bad", engines=["grounding"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("grounding: ONNX Runtime differs") and "not written" in msg
    assert not (tmp_path / "bad").exists() and _leftovers(tmp_path) == []


def test_export_engine_alone_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Callable):
    config = tiny_random("keypoint")
    spec = S.specs_for(config, ENVELOPE)[S.GROUNDING]
    model = tiny_model("keypoint")
    monkeypatch.setitem(onnx_export.TOLERANCE, "fp32", 0.0)
    with pytest.raises(ParityError):
        onnx_export.export_engine(model, spec, tmp_path, config=config)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setitem(onnx_export.TOLERANCE, "fp32", 1e-4)
    result = onnx_export.export_engine(model, spec, tmp_path, config=config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grounding.json", "grounding.onnx"]
    assert result.parity.passed and result.nodes == result.nodes_fp32


def test_refuses_to_replace_a_folder_that_is_not_an_engine_folder(tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError) as e:
        _export(tmp_path, "mine", engines=["grounding"])
    assert "not an engine folder" in str(e.value)
    assert (out / "notes.txt").read_text() == "keep me"


def test_graph_io_mismatch_is_reported(folders: dict[str, Path]):
    d = folders["tb32"]
    spec = S.specs_for(tiny_random("text-box"), ENVELOPE)[S.UNET]
    graph = onnx.load(str(d / "unet.onnx"), load_external_data=False)
    graph.graph.input[0].name = "latents"
    graph.graph.input[1].type.tensor_type.elem_type = onnx.TensorProto.INT64
    problems = check_io(graph, spec)
    assert any("inputs" in p for p in problems) and any("timestep: dtype" in p for p in problems)


def test_export_from_a_checkpoint_folder(tmp_path: Path, tiny_model: Callable):
    from gligen_ref.checkpoint import file_sha256, save_diffusers

    ckpt = save_diffusers(tiny_model("text-box"), tmp_path / "ckpt")
    d = export_engines(
        ckpt, tmp_path / "out", envelope=ENVELOPE, engines=["grounding"], progress=False, threads=1
    )
    folder = M.load_folder_manifest(d)
    assert (
        folder.checkpoint_sha256
        == file_sha256(ckpt)
        == M.load_manifest(d / "grounding.json").checkpoint_sha256
    )
    assert folder.extra["source"].startswith("diffusers checkpoint")
    assert (d / "tokenizer" / "vocab.json").is_file()


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "cli"
    argv = [
        "export",
        "--model",
        "tiny-random",
        "--modality",
        "keypoint",
        "--out",
        str(out),
        "--engines",
        "grounding",
    ]
    assert cli_main([*argv, "--max-size", "192", "--max-batch", "2", "--threads", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    folder = json.loads((out / "manifest.json").read_text())
    assert folder["envelope"] == {"batch": [1, 1, 2], "height": [64, 128, 192], "width": [64, 128, 192]}
    assert folder["model_config"]["modality"] == Modality.KEYPOINT.value
    assert os.access(out / "grounding.onnx", os.R_OK)
    assert cli_main([*argv, "--height", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: invalid size range") and "\n" not in err
