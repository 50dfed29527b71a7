"""The trained tiny model shipped in the package (`--model tiny`): its files, its loaders, its answers,
and whether it grounds (the object lands in its box)."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gligen_rt.benchmarks.grounding import detect
from gligen_rt.cli import main
from gligen_rt.core.request import GenerationRequest, GroundedObject
from gligen_rt.runtime.pipeline import GligenPipeline
from gligen_rt.runtime.tiny import TRAINED_TINY_GUIDANCE, trained_tiny_dir

REPO = Path(__file__).resolve().parent.parent
SKIP_IN_COPY = (".git", ".venv", "build", "build-*", "dist", "*.egg-info", "__pycache__", ".*_cache")
TINY = trained_tiny_dir()
PHRASE, COLOUR = "red circle", "red"
BOXES = [(0.05, 0.05, 0.5, 0.5), (0.5, 0.05, 0.95, 0.5), (0.05, 0.5, 0.5, 0.95), (0.5, 0.5, 0.95, 0.95)]


def _request(box, beta: float = 1.0, seed: int = 0, steps: int = 20) -> GenerationRequest:
    return GenerationRequest(
        prompt=f"a {PHRASE} on a grey floor",
        objects=(GroundedObject(box=box, phrase=PHRASE),),
        seed=seed,
        steps=steps,
        guidance=TRAINED_TINY_GUIDANCE,
        beta=beta,
    )


def _iou(a, b) -> float:
    from gligen_ref.train.scenes import iou

    return iou(a, b) if a is not None else 0.0


def _digest(folder: Path, suffixes: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    files = sorted((f for f in folder.rglob("*") if f.is_file() and f.name.endswith(suffixes)), key=str)
    for f in files:
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def pipe():
    with GligenPipeline.from_engines(TINY / "engines", "ort-cpu") as p:
        yield p


def test_model_card_names_the_files_and_the_size_limit_holds() -> None:
    card = (TINY / "README.md").read_text(encoding="utf-8")
    assert _digest(TINY / "model", (".safetensors",)) in card
    assert _digest(TINY / "engines", (".onnx", ".onnx.data")) in card
    total = sum(f.stat().st_size for f in TINY.rglob("*") if f.is_file())
    assert total <= 40e6, f"the shipped model takes {total / 1e6:.1f} MB (limit 40 MB)"
    assert all(f.name.endswith(".fp16.safetensors") for f in (TINY / "model").rglob("*.safetensors"))
    assert "text-box" in card and "tiny-random" in card


def test_diffusers_loader_reads_it_and_the_engines_agree(pipe) -> None:
    from gligen_ref.pipeline import ReferencePipeline

    ref = ReferencePipeline.from_checkpoint(TINY / "model")
    assert ref.config.name == "tiny" and ref.config.modality.value == "text-box"
    request = _request(BOXES[0], steps=4)
    a = ref(request).images[0].astype(np.int16)
    b = pipe(request).images[0].astype(np.int16)
    assert np.abs(a - b).mean() < 1.0, np.abs(a - b).mean()


def test_the_token_embedding_is_stored_fp16_and_exact(pipe) -> None:
    """export/compact.py halves the text encoder losslessly: the engine equals the reference."""
    import onnx
    import torch

    from gligen_ref.checkpoint import load_checkpoint

    graph = onnx.load(str(TINY / "engines" / "text_encoder.onnx"))
    fp16_tables = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert fp16_tables and max(t.dims[0] for t in fp16_tables) == 49408
    model = load_checkpoint(TINY / "model").model
    ids = pipe.tokenizer.encode(["a red circle and a blue square on a grey floor", ""])
    with torch.no_grad():
        want, _ = model.encode_text(torch.from_numpy(ids.astype(np.int64)))
    got = pipe.backend.run("text_encoder", {"input_ids": ids.astype(np.int32)})["last_hidden_state"]
    assert np.abs(np.asarray(got) - want.numpy()).max() < 1e-4


def test_compaction_leaves_a_table_that_is_not_fp16_alone(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from gligen_rt.export.compact import store_token_embedding_fp16

    table = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    node = helper.make_node("Gather", ["table", "ids"], ["out"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 8])],
        [numpy_helper.from_array(table, "table")],
    )
    path = tmp_path / "text_encoder.onnx"
    onnx.save(helper.make_model(graph), str(path))
    before = path.read_bytes()
    assert store_token_embedding_fp16(tmp_path) is False and path.read_bytes() == before
    exact = table.astype(np.float16).astype(np.float32)
    graph.initializer[0].CopyFrom(numpy_helper.from_array(exact, "table"))
    onnx.save(helper.make_model(graph), str(path))
    assert store_token_embedding_fp16(tmp_path) is True
    import onnxruntime as ort

    ids = np.array([0, 1999, 7], dtype=np.int64)
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})
    assert out.dtype == np.float32 and np.array_equal(out, exact[ids])


@pytest.mark.parametrize(
    "flags",
    [["--modality", "keypoint"], ["--inpaint"], ["--model-seed", "3"]],
    ids=["modality", "inpaint", "model-seed"],
)
def test_what_only_random_presets_have_is_refused_in_one_line(flags, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.png"
    argv = ["generate", "--model", "tiny", *flags, "--prompt", "a person", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--model tiny" in err and not out.exists()


def test_moving_the_box_moves_the_object(pipe) -> None:
    """One red circle in each quadrant's box: the detected object follows its box (its centroid is
    nearest that box's centre, within 0.2 of it) and overlaps it. The model shipped before this one
    drew the object in one place whatever the box and fails here."""
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in BOXES]
    for i, box in enumerate(BOXES):
        found = detect(pipe(_request(box)).images[0], COLOUR)
        assert found is not None, box
        got = ((found[0] + found[2]) / 2, (found[1] + found[3]) / 2)
        dist = [float(np.hypot(got[0] - c[0], got[1] - c[1])) for c in centres]
        assert int(np.argmin(dist)) == i and min(dist) < 0.2, (box, found)
        assert _iou(found, box) >= 0.6, (box, found)  # 0.89-0.92 measured at the card's guidance


def test_grounding_off_loses_the_box(pipe) -> None:
    grounded = [_iou(detect(pipe(_request(b)).images[0], COLOUR), b) for b in BOXES]
    off = [_iou(detect(pipe(_request(b, beta=0.0)).images[0], COLOUR), b) for b in BOXES]
    assert np.mean(grounded) >= 0.7
    assert np.mean(off) < 0.5 * np.mean(grounded)


@pytest.mark.slow
def test_generate_tiny_in_a_fresh_venv_without_torch(tmp_path: Path) -> None:
    """`pip install '.[ort]'` (no torch) and the README's main command on the shipped engines."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # Built from a copy: a build inside the checkout would leave build/ behind (and reuse stale files).
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*SKIP_IN_COPY))
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", f"{source}[ort]"],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert subprocess.run([str(py), "-c", "import torch"], env=env, capture_output=True).returncode != 0
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    line = next(x for x in readme if "scripts/install.sh" in x and "gligen-rt generate" in x)
    argv = shlex.split(line[line.index("gligen-rt generate") :])  # the main command, as written
    out = tmp_path / argv[argv.index("--out") + 1]
    cmd = [str(venv / "bin" / "gligen-rt"), *argv[1:]]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    from PIL import Image

    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (128, 128, 3) and image.std() > 5  # a picture, not a flat field
    assert out.with_name(out.stem + "_overlay" + out.suffix).is_file()


@pytest.mark.parametrize(
    ("flags", "request_json", "expected"),
    [
        ([], None, TRAINED_TINY_GUIDANCE),
        (["--guidance", "3"], None, 3.0),
        ([], {"prompt": "a red circle", "guidance": 4}, 4.0),
        ([], {"prompt": "a red circle"}, TRAINED_TINY_GUIDANCE),
    ],
    ids=["default", "flag", "json", "json-without"],
)
def test_model_tiny_defaults_to_its_own_guidance(
    flags, request_json, expected, tmp_path: Path, caplog
) -> None:
    """`--model tiny` runs at the guidance its card measured best unless the flag or the request file
    names one; every other model keeps the request's default."""
    import json
    import logging

    argv = ["generate", "--model", "tiny", "--steps", "1", "--out", str(tmp_path / "x.png"), *flags]
    if request_json is None:
        argv += ["--prompt", "a red circle"]
    else:
        (tmp_path / "r.json").write_text(json.dumps(request_json), encoding="utf-8")
        argv += ["--request", str(tmp_path / "r.json")]
    with caplog.at_level(logging.INFO, logger="gligen_rt"):
        assert main(argv) == 0
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("generate ("))
    assert line.endswith(f"guidance {expected:g}"), line
    assert TRAINED_TINY_GUIDANCE != GenerationRequest(prompt="x").guidance


def test_eval_sweeps_guidance(tmp_path: Path) -> None:
    """`gligen-rt eval --guidance 1 2`: one row per scale, each with its own grid."""
    import json

    out = tmp_path / "eval"
    argv = ["eval", "--model", str(TINY / "model"), "--engines", str(TINY / "engines")]
    argv += ["--backends", "ort-fp32", "--conditions", "grounded", "--n", "2", "--steps", "2"]
    assert main([*argv, "--guidance", "1", "2", "--out", str(out)]) == 0
    record = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["guidance"] for r in record["results"]] == [1.0, 2.0]
    # what the engine rows ran: the shipped folder is one whole UNet
    assert record["engines"] == {"gate_skip": False, "feature_cache": False, "token_downsample": 1}
    assert all(r["objects"] > 0 and 0.0 <= r["ap50"] <= 1.0 for r in record["results"])
    assert (out / "grid_ort-fp32_grounded_g1.png").is_file() and (
        out / "grid_ort-fp32_grounded_g2.png"
    ).is_file()
    table = (out / "table.md").read_text(encoding="utf-8").splitlines()
    assert "| guidance |" in table[0] and table[2].split("|")[3].strip() == "1"


def test_concurrent_first_exports_wait_for_one_another(tmp_path: Path) -> None:
    """Two processes asking for the same tiny-random folder at once (test workers, servers starting
    together): the second waits on the first's lock, then finds the folder in place."""
    import threading

    from gligen_rt.runtime.tiny import _exclusive

    lock = tmp_path / ".folder.lock"
    order: list[str] = []
    first_has_it = threading.Event()
    release = threading.Event()

    def first() -> None:
        with _exclusive(lock):
            order.append("first in")
            first_has_it.set()
            release.wait(5)
            order.append("first out")

    def second() -> None:
        first_has_it.wait(5)
        with _exclusive(lock):
            order.append("second in")

    a, b = threading.Thread(target=first), threading.Thread(target=second)
    a.start()
    b.start()
    first_has_it.wait(5)
    b.join(0.3)
    assert b.is_alive() and order == ["first in"]  # blocked while the first holds the lock
    release.set()
    a.join(5)
    b.join(5)
    assert order == ["first in", "first out", "second in"]
