"""export/gate_skip.py: one UNet graph for both phases, every fuser behind ``If(gate != 0)``.

On tiny random GLIGENs (text-box, and hed whose graph also switches conv_in at gate 0), exported
with the project's exporter (weights in ``unet.onnx.data``, the pass run on the graph loaded without
them, as the exporter would): the result passes the checker, keeps the fused attention pattern in
its branches, equals the original graph at gates 1, 0.5, 0 and the ``unet_plain`` engine at gate 0
on ONNX Runtime CPU and OpenVINO CPU; its FP16 form runs on ORT and builds with TensorRT-RTX.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from gligen_rt.core.config import tiny_random
from gligen_rt.engines import spec as S
from gligen_rt.export.api import export_engines
from gligen_rt.export.gate_skip import (
    GateSkipError,
    fuser_scope,
    gate_skip_report,
    skip_fusers,
    skip_fusers_at_gate_zero,
)
from gligen_rt.export.inputs import make_inputs
from gligen_rt.export.parity import rel_error

ENVELOPE = S.ShapeEnvelope(batch=(1, 1, 2), height=(64, 128, 192), width=(64, 128, 192))
SMALL_DATA = 4 << 20  # the tiny UNets (~12 MB) keep their weights in <engine>.onnx.data
FUSERS = 16  # SD-1.x layout: 6 down, 1 mid, 9 up
EXACT = 1e-5
GATES = (1.0, 0.5, 0.0)
POINTS = ((2, 128, 128), (1, 128, 192))  # (batch, height, width): CFG batch square, batch 1 wide
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
HAS_NNCF = importlib.util.find_spec("nncf") is not None

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def _transform(src: Path, dst: Path) -> dict:
    """The exporter's intended use: graph loaded without its weights, rewritten, saved beside the
    original ``.onnx.data`` (which it keeps referencing)."""
    model = onnx.load(str(src), load_external_data=False)
    out, report = skip_fusers(model, inplace=True)
    onnx.save(out, str(dst))
    return {"report": report, "path": dst}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Per modality: the engine folder (unet, unet_plain), the transformed unet and its report."""
    tmp = tmp_path_factory.mktemp("gate_skip")
    out = {}
    for modality in ("text-box", "hed"):
        folder = export_engines(
            "tiny-random",
            tmp / modality,
            envelope=ENVELOPE,
            modality=modality,
            engines=["unet", "unet_plain"],
            progress=False,
            external_data_min_bytes=SMALL_DATA,
            threads=1,
        )
        out[modality] = {
            "folder": folder,
            "config": tiny_random(modality),
            **_transform(folder / "unet.onnx", folder / "unet_gate_skip.onnx"),
        }
    return out


def _inputs(case: dict, engine: str, b: int, h: int, w: int, gate: float) -> dict[str, np.ndarray]:
    spec = S.specs_for(case["config"], ENVELOPE)[engine]
    return make_inputs(spec, case["config"], b, h, w, seed=b + h + w, gate=gate)


def _ort(path: Path) -> Runner:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(["eps"], feeds)[0]


def _openvino(path: Path) -> Runner:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    )
    return lambda feeds: np.asarray(compiled(feeds)[compiled.output("eps")])


def _check_equal(
    case: dict, make: Callable[[Path], Runner], points: tuple[tuple[int, int, int], ...] = POINTS
) -> None:
    """The transformed graph against the original at every gate and against unet_plain at gate 0."""
    folder = case["folder"]
    original, skipped, plain = (
        make(folder / "unet.onnx"),
        make(case["path"]),
        make(folder / "unet_plain.onnx"),
    )
    for b, h, w in points:
        for gate in GATES:
            feeds = _inputs(case, "unet", b, h, w, gate)
            got = skipped(feeds)
            err, _ = rel_error(got, original(feeds))
            assert err < EXACT, f"gate {gate} at {b}x{h}x{w}: {err:.3g} from the original graph"
            if gate == 0.0:
                plain_feeds = {k: v for k, v in feeds.items() if k in ("sample", "timestep", "context")}
                if "extra" in feeds and case["config"].inpaint:
                    plain_feeds["extra"] = feeds["extra"]
                err, _ = rel_error(got, plain(plain_feeds))
                assert err < EXACT, f"gate 0 at {b}x{h}x{w}: {err:.3g} from unet_plain"


# ---------------------------------------------------------------------------------------------
# Structure


def test_structure(folders: dict[str, dict]) -> None:
    case = folders["text-box"]
    report = case["report"]
    path = case["path"]
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    original = onnx.load(str(case["folder"] / "unet.onnx"), load_external_data=False)

    assert len(report.fusers) == FUSERS and report.if_nodes == FUSERS
    assert report.nodes_before == len(original.graph.node)
    assert report.nodes_after == len(model.graph.node) < report.nodes_before
    assert report.nodes_after == report.nodes_before - report.branch_nodes + FUSERS + 5  # cond: 5 nodes
    counts = gate_skip_report(model)
    assert counts == {
        "nodes": report.nodes_after,
        "if_nodes": FUSERS,
        "branch_nodes": report.branch_nodes + FUSERS,
    }
    assert "gate skip: 16 fusers" in report.summary() and report.to_dict()["fusers"] == FUSERS
    # Weights stay in the main graph, referenced from the branches: nothing copied.
    assert [t.name for t in model.graph.initializer] == [t.name for t in original.graph.initializer]
    for node in (n for n in model.graph.node if n.op_type == "If"):
        branches = {a.name: a.g for a in node.attribute}
        assert list(node.input) == ["gate_skip/cond"]
        assert not branches["then_branch"].initializer and not branches["else_branch"].initializer
        (skip,) = branches["else_branch"].node
        assert skip.op_type == "Identity"
        then_nodes = branches["then_branch"].node
        assert all(fuser_scope(n) or n.op_type == "Constant" for n in then_nodes)
        # The fused attention pattern (export/fuse.py MATMUL form) is intact inside the branch.
        made = {o: n for n in then_nodes for o in n.output}
        softmax = [n for n in then_nodes if n.op_type == "Softmax"]
        assert len(softmax) == 1
        assert made[softmax[0].input[0]].op_type == "MatMul"
        assert any(n.op_type == "MatMul" and softmax[0].output[0] in n.input for n in then_nodes)
    # Every fuser node of the original is in a branch; nothing else moved.
    fuser_nodes = sum(fuser_scope(n) is not None for n in original.graph.node)
    assert fuser_nodes <= report.branch_nodes
    assert not any(fuser_scope(n) for n in model.graph.node if n.op_type != "If")


def test_pass_refuses_what_it_cannot_do(folders: dict[str, dict]) -> None:
    done = onnx.load(str(folders["text-box"]["path"]), load_external_data=False)
    with pytest.raises(GateSkipError, match="already"):
        skip_fusers_at_gate_zero(done)
    plain = onnx.load(str(folders["text-box"]["folder"] / "unet_plain.onnx"), load_external_data=False)
    with pytest.raises(GateSkipError, match="no input 'gate'"):
        skip_fusers_at_gate_zero(plain)
    # A fuser value read outside the fuser: the pass refuses instead of guessing.
    leaky = _toy(leak=True)
    with pytest.raises(GateSkipError, match="2 output values"):
        skip_fusers_at_gate_zero(leaky)


# ---------------------------------------------------------------------------------------------
# Equality


@pytest.mark.parametrize("modality", ["text-box", "hed"])
def test_ort_equal_to_original_and_plain(folders: dict[str, dict], modality: str) -> None:
    _check_equal(folders[modality], _ort)


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_openvino_equal_to_original_and_plain(folders: dict[str, dict]) -> None:
    """OpenVINO reads the If graph (core.read_model on the file); one shape point, text-box only
    (hed's conv_in switch is the same on every backend; its compiles cost 6 s)."""
    _check_equal(folders["text-box"], _openvino, POINTS[:1])


@pytest.mark.skipif(not (HAS_OPENVINO and HAS_NNCF), reason="openvino and nncf are not installed")
def test_int8_weights_reach_the_fusers_behind_if(folders: dict[str, dict], tmp_path: Path) -> None:
    """openvino-int8 of a gate-skip UNet: NNCF cannot read the If graph as it comes from ONNX and
    leaves If bodies alone; save_ir compresses the main graph and every body, and the result stays
    close to FP32 at both gates."""
    import openvino as ov

    from gligen_rt.engines.openvino import save_ir

    case = folders["text-box"]
    fp32 = save_ir(case["path"], tmp_path / "fp32" / "unet.xml")
    int8 = save_ir(case["path"], tmp_path / "int8" / "unet.xml", "int8-w")
    assert int8.with_suffix(".bin").stat().st_size < 0.35 * fp32.with_suffix(".bin").stat().st_size
    ifs = [op for op in ov.Core().read_model(str(int8)).get_ordered_ops() if op.get_type_name() == "If"]
    assert len(ifs) == 16
    for op in ifs:
        consts = [
            o for i in (0, 1) for o in op.get_function(i).get_ordered_ops() if o.get_type_name() == "Constant"
        ]
        assert any(c.get_element_type() == ov.Type.u8 for c in consts)
    run_fp32, run_int8 = _openvino(fp32), _openvino(int8)
    for gate in GATES:
        feeds = _inputs(case, "unet", 1, 128, 128, gate)
        err, _ = rel_error(run_int8(feeds), run_fp32(feeds))
        assert err < 0.05, f"gate {gate}: {err:.3g} from FP32"


@pytest.fixture(scope="module")
def fp16_pair(folders: dict[str, dict]) -> tuple[Path, Path]:
    """The text-box UNet as the strongly typed FP16 graph (export/fp16.py), then the pass on it."""
    from gligen_rt.export.fp16 import convert_fp16

    folder = folders["text-box"]["folder"]
    fp16 = folder / "unet_fp16.onnx"
    convert_fp16(folder / "unet.onnx", fp16, external_data=True)
    _transform(fp16, folder / "unet_fp16_gate_skip.onnx")
    return fp16, folder / "unet_fp16_gate_skip.onnx"


def test_fp16_graph(folders: dict[str, dict], fp16_pair: tuple[Path, Path]) -> None:
    """FP16: ONNX Runtime CPU computes chains of FP16 ops in FP32 and rounds to FP16 at subgraph
    boundaries, so the two graphs differ by FP16 rounding (~2e-3), far inside the FP16 parity limit."""
    fp16, skipped = fp16_pair
    onnx.checker.check_model(str(skipped), full_check=True)
    original, transformed = _ort(fp16), _ort(skipped)
    case = folders["text-box"]
    for gate in (1.0, 0.0):
        feeds = _inputs(case, "unet", 2, 128, 128, gate)
        err, _ = rel_error(transformed(feeds), original(feeds))
        assert err < 1e-2, f"fp16 gate {gate}: {err:.3g}"


@pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx is not installed")
def test_tensorrt_rtx_builds(fp16_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """TensorRT-RTX parses the If graph into conditionals and builds a plan (CPU-only build)."""
    from gligen_rt.engines.tensorrt import build_engine

    spec = S.specs_for(tiny_random("text-box"), ENVELOPE)[S.UNET]
    plan = build_engine(
        fp16_pair[1],
        spec,
        tmp_path / "unet.plan",
        backend="tensorrt-rtx",
        precision="fp16",
        flavor="fp16-strongly-typed",
        static_shape=(2, 128, 128),
    )
    assert plan.stat().st_size > 0
    # The If layers are recorded, so the runtime never captures this plan into a CUDA graph.
    from gligen_rt.engines.manifest import load_manifest, manifest_path_for
    from gligen_rt.engines.tensorrt import cuda_graph_allowed

    builder = load_manifest(manifest_path_for(plan)).builder
    assert "CONDITION" in builder["control_flow"] and not cuda_graph_allowed(builder)


# ---------------------------------------------------------------------------------------------
# Finding fusers


def _toy(leak: bool = False) -> onnx.ModelProto:
    """h = x + 1; fuser: y = h + gate * (h @ W) [+ leak]; out = 2 y."""
    f = "/blk/fuser/"
    nodes = [
        helper.make_node("Add", ["x", "one"], ["h"], name="/blk/Add"),
        helper.make_node("MatMul", ["h", "W"], ["mm"], name=f + "MatMul"),
        helper.make_node("Mul", ["gate", "mm"], ["gm"], name=f + "Mul"),
        helper.make_node("Add", ["h", "gm"], ["y"], name=f + "Add"),
        helper.make_node("Mul", ["y", "two"], ["out"], name="/blk/Mul"),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])]
    if leak:
        outputs.append(helper.make_tensor_value_info("mm", TensorProto.FLOAT, [2, 3]))
    graph = helper.make_graph(
        nodes,
        "toy",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("gate", TensorProto.FLOAT, [1]),
        ],
        outputs,
        [
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("W", TensorProto.FLOAT, [3, 3], np.arange(9, dtype=np.float32) / 9),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_toy_graph_and_dynamo_scopes() -> None:
    import onnxruntime as ort

    model = _toy()
    out, report = skip_fusers(model)
    assert (report.fusers[0].x, report.fusers[0].y) == ("h", "y")
    assert [n.op_type for n in model.graph.node].count("If") == 0  # input untouched
    onnx.checker.check_model(out, full_check=True)
    a = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for gate in GATES:
        feeds = {"x": x, "gate": np.array([gate], np.float32)}
        np.testing.assert_array_equal(b.run(None, feeds)[0], a.run(None, feeds)[0])
    # The dynamo exporter's scopes live in node metadata.
    node = helper.make_node("MatMul", ["a", "b"], ["c"], name="node_MatMul_90")
    entry = node.metadata_props.add()
    entry.key = "pkg.torch.onnx.name_scopes"
    entry.value = (
        "['', 'model.unet', 'model.unet.mid_block.attentions.0.transformer_blocks.0.fuser', 'x.to_q']"
    )
    assert fuser_scope(node) == "model.unet.mid_block.attentions.0.transformer_blocks.0.fuser"
    assert fuser_scope(helper.make_node("Relu", ["a"], ["b"], name="/unet/conv_in/Conv")) is None


@pytest.fixture(scope="module")
def gate_skip_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Tiny text-box engine folders: (one gate-skip UNet, unet + unet_plain)."""
    tmp = tmp_path_factory.mktemp("gate_skip_pair")
    common = dict(envelope=ENVELOPE, modality="text-box", progress=False, threads=1)
    one = export_engines("tiny-random", tmp / "one", gate_skip=True, **common)
    two = export_engines("tiny-random", tmp / "two", **common)
    return one, two


@pytest.mark.parametrize(
    "backend",
    ["ort-cpu", pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="no openvino"))],
)
def test_gate_one_after_gate_zero_still_runs_the_fusers(
    gate_skip_pair: tuple[Path, Path], backend: str
) -> None:
    """A backend that ran the gate-skip UNet at gate 0 (the plain branch) runs the fusers at gate 1
    on its next call: nothing it kept from the first call (a compiled or captured path) replays
    the plain branch. TensorRT gets the same promise by construction: plans with If layers are
    never CUDA-graph captured (tests/test_build_trt_rtx.py)."""
    from gligen_rt.runtime import make_backend
    from gligen_rt.runtime.folder import EngineFolder

    folder = EngineFolder.open(gate_skip_pair[0], check_sha256=False)
    spec = folder.specs[S.UNET]
    feeds = {g: make_inputs(spec, folder.config, 2, 128, 128, seed=7, gate=g) for g in (0.0, 1.0)}
    with make_backend(backend, threads=1) as fresh:
        fresh.load(folder, [S.UNET])
        want = fresh.run(S.UNET, feeds[1.0])["eps"]
    with make_backend(backend, threads=1) as b:
        b.load(folder, [S.UNET])
        plain = b.run(S.UNET, feeds[0.0])["eps"]
        got = b.run(S.UNET, feeds[1.0])["eps"]
    assert rel_error(got, want)[0] < EXACT
    assert rel_error(got, plain)[0] > 1e-3  # the fusers changed the output: gate 1 is not gate 0


def test_gate_skip_folder_runs_one_unet_and_gives_the_two_engine_image(
    gate_skip_pair: tuple[Path, Path],
) -> None:
    """export_engines(gate_skip=True) writes no unet_plain; the runtime's plain steps then run the
    If graph at gate 0 and the image equals the two-engine folder's."""
    from gligen_rt.core.request import GenerationRequest, GroundedObject
    from gligen_rt.runtime import GligenPipeline

    one, two = gate_skip_pair
    assert not (one / "unet_plain.onnx").exists() and (two / "unet_plain.onnx").exists()
    assert gate_skip_report(onnx.load(str(one / "unet.onnx"), load_external_data=False))["if_nodes"] == 16
    request = GenerationRequest(
        prompt="a room",
        objects=(GroundedObject((0.1, 0.2, 0.5, 0.6), "a cat"),),
        seed=4,
        steps=4,
        beta=0.5,
        height=128,
        width=128,
    )
    with GligenPipeline.from_engines(one, "ort-cpu") as a, GligenPipeline.from_engines(two, "ort-cpu") as b:
        ra, rb = a(request), b(request)
    assert np.abs(ra.latents - rb.latents).max() < 1e-5
