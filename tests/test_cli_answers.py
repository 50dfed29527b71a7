"""The CLI as a new user meets it: one-line answers, flags that contradict, outputs, overlays, help.

Each test here names the defect it guards; most run before any model is loaded (fractions of a
second). The engine folder they share is the tiny random model's text encoder alone (seconds).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gligen_rt.cli import build_parser, main
from gligen_rt.core.imageio import COCO_SKELETON, draw_overlay
from gligen_rt.core.request import Person
from gligen_rt.engines.gpu import gpu_count
from tests.helpers import write_image

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "tiny-random", "--prompt", "a room", "--steps", "1", "--height", "64", "--width", "64"]
NO_GPU = pytest.mark.skipif(gpu_count()[0] > 0, reason="this machine has an NVIDIA GPU and driver")
# 17 COCO keypoints of one standing person (nose .. ankles), normalised
PERSON = (
    "0.5,0.1 0.52,0.08 0.48,0.08 - - 0.62,0.25 0.38,0.25 0.68,0.4 0.32,0.4 0.7,0.55 0.3,0.55 "
    "0.57,0.55 0.43,0.55 0.58,0.75 0.42,0.75 0.6,0.95 0.4,0.95"
)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """main(args) -> (exit status, stdout, stderr); argparse's SystemExit becomes its status."""
    try:
        code = main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    text = err.strip()
    assert code == 2, text
    assert text.startswith("error: ") and "\n" not in text, text
    for word in words:
        assert word in text, (word, text)


@pytest.fixture(scope="module")
def engine_folder(tmp_path_factory) -> Path:
    """An exported folder with the tiny random model's text encoder only (enough for build/inspect)."""
    out = tmp_path_factory.mktemp("engines") / "tiny"
    code = main(["export", "--model", "tiny-random", "--engines", "text_encoder", "--out", str(out)])
    assert code == 0
    return out


# -- argparse errors: one line naming the flag, what it accepts and --help (issue 9) ---------------

PARSE_ERRORS = {
    "generate wrong type": (["generate", "--steps", "abc"], ["--steps", "integer", "'abc'", "--help"]),
    "generate unknown flag": (["generate", "--stepz", "3"], ["--stepz", "--steps", "generate --help"]),
    "generate bad choice": (["generate", "--backend", "cuda"], ["--backend", "ort-cpu", "--help"]),
    "export wrong type": (["export", "--opset", "x", "--out", "o"], ["--opset", "integer", "--help"]),
    "export missing": (["export"], ["--out", "export --help"]),
    "build bad choice": (["build", "--onnx", "d", "--backend", "trt"], ["--backend", "tensorrt", "--help"]),
    "bench wrong type": (["bench", "--size", "big"], ["--size", "integer", "bench --help"]),
    "inspect unknown flag": (["inspect", "d", "--json"], ["--json", "inspect --help"]),
    "unknown command": (["gen"], ["'gen'", "generate", "--help"]),
}


@pytest.mark.parametrize("name", list(PARSE_ERRORS))
def test_parse_errors_are_one_line_with_the_flag_and_help(name, capsys) -> None:
    args, words = PARSE_ERRORS[name]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, *words)


# -- contradictions and one meaning per flag (issue 13) ---------------------------------------------


def test_model_and_engines_contradict(engine_folder, capsys) -> None:
    code, _, err = run_cli(["generate", *TINY, "--engines", str(engine_folder)], capsys)
    assert_one_line_error(code, err, "--model", "--engines")


def test_bench_cached_only_needs_a_feature_cache(tmp_path, capsys) -> None:
    code, _, err = run_cli(["bench", "--cached-only", "--out-dir", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "--cached-only", "--feature-cache")
    assert not (tmp_path / "o").exists()


def test_engines_and_modality_contradict(engine_folder, capsys) -> None:
    args = ["generate", "--engines", str(engine_folder), "--modality", "keypoint", "--prompt", "x"]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "--modality", "--engines")


@pytest.mark.parametrize("command", ["generate", "export"])
def test_checkpoint_takes_no_model_name_in_any_subcommand(command, tmp_path, capsys) -> None:
    code, _, err = run_cli([command, "--checkpoint", "tiny-random", "--out", str(tmp_path / "o.png")], capsys)
    assert_one_line_error(code, err, "--checkpoint", "--model tiny-random")
    assert not any(tmp_path.iterdir())


# -- outputs: never an input, the format from the extension (issue 9) --------------------------------


@pytest.mark.parametrize("target", ["the map itself", "its _overlay twin"])
def test_out_never_overwrites_an_input(target, tmp_path, capsys) -> None:
    if target == "the map itself":
        cond = out = write_image(tmp_path / "depth.png", size=64)
    else:  # --out d.png --overlay would write d_overlay.png, which is the input
        cond, out = write_image(tmp_path / "d_overlay.png", size=64), str(tmp_path / "d.png")
    before = Path(cond).read_bytes()
    args = ["generate", *TINY, "--modality", "depth", "--condition", cond, "--out", out, "--overlay"]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "--out", "overwrite")
    assert Path(cond).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(cond).name]


def test_out_extension_that_is_no_image_format_is_refused(tmp_path, capsys) -> None:
    code, _, err = run_cli(["generate", *TINY, "--out", str(tmp_path / "x.txt")], capsys)
    assert_one_line_error(code, err, ".txt", ".png")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("ext", "fmt"), [(".jpg", "JPEG"), (".webp", "WEBP"), (".png", "PNG")])
def test_out_extension_sets_the_format(ext, fmt, tmp_path, capsys) -> None:
    out = tmp_path / f"x{ext}"
    code, stdout, err = run_cli(["generate", *TINY, "--out", str(out), "--num-images", "2"], capsys)
    assert code == 0, err
    names = stdout.split()
    assert names == [str(tmp_path / f"x_0{ext}"), str(tmp_path / f"x_1{ext}")]
    assert all(Image.open(n).format == fmt for n in names)


# -- overlays (issue 13) ---------------------------------------------------------------------------


def test_keypoint_overlay_draws_the_skeleton(tmp_path, capsys) -> None:
    out = tmp_path / "kp.png"
    args = [
        "generate",
        *TINY,
        "--modality",
        "keypoint",
        "--keypoints",
        PERSON,
        "--out",
        str(out),
        "--overlay",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    image = np.asarray(Image.open(out), dtype=np.int16)
    overlay = np.asarray(Image.open(tmp_path / "kp_overlay.png"), dtype=np.int16)
    # the limb between the hips (keypoints 11 and 12) is drawn: its midpoint changed
    (x0, y0), (x1, y1) = (0.57, 0.55), (0.43, 0.55)
    cx, cy = round((x0 + x1) / 2 * 64), round((y0 + y1) / 2 * 64)
    assert (
        np.abs(overlay[cy - 1 : cy + 2, cx - 1 : cx + 2] - image[cy - 1 : cy + 2, cx - 1 : cx + 2]).max() > 30
    )


def test_skeleton_lines_join_present_keypoints_only() -> None:
    kps: list = [None] * 17
    kps[5], kps[7] = (0.2, 0.2), (0.8, 0.8)  # left shoulder -> left elbow
    out = draw_overlay(np.zeros((64, 64, 3), np.uint8), persons=[Person(tuple(kps))])
    assert (5, 7) in COCO_SKELETON
    assert out[32, 32].any()  # on the limb
    assert not out[10, 54].any()  # elsewhere


def test_spatial_overlay_shows_the_condition_map(tmp_path, capsys) -> None:
    cond = np.zeros((64, 64, 3), np.uint8)
    cond[:, 32:] = 255  # right half white
    Image.fromarray(cond).save(tmp_path / "depth.png")
    out = tmp_path / "d.png"
    args = ["generate", *TINY, "--modality", "depth", "--condition", str(tmp_path / "depth.png")]
    code, _, err = run_cli([*args, "--out", str(out), "--overlay"], capsys)
    assert code == 0, err
    image = np.asarray(Image.open(out), dtype=np.int16)
    overlay = np.asarray(Image.open(tmp_path / "d_overlay.png"), dtype=np.int16)
    blended = (image + cond + 1) // 2
    np.testing.assert_allclose(overlay, blended, atol=1)


# -- GPU backends, build, inspect (issue 13) ---------------------------------------------------------


@NO_GPU
@pytest.mark.parametrize("backend", ["ort-cuda", "ort-trt", "tensorrt", "tensorrt-rtx"])
def test_gpu_backends_without_a_gpu_say_so_first(backend, engine_folder, tmp_path, capsys) -> None:
    args = ["generate", "--engines", str(engine_folder), "--backend", backend, "--prompt", "x"]
    code, _, err = run_cli([*args, "--out", str(tmp_path / "o.png")], capsys)
    assert_one_line_error(code, err, "no NVIDIA GPU / driver found", f"--backend {backend}")


@NO_GPU
@pytest.mark.parametrize("backend", ["tensorrt", "ort-cuda", "ort-trt"])
def test_refused_build_leaves_no_folder(backend, engine_folder, capsys) -> None:
    code, _, err = run_cli(["build", "--onnx", str(engine_folder), "--backend", backend], capsys)
    assert_one_line_error(code, err, "no NVIDIA GPU / driver found")
    assert not (engine_folder / backend).exists()


def test_failed_build_removes_the_folder_it_made(engine_folder, capsys) -> None:
    """A refusal after the output folder was made (FP16 asked of ORT on an FP32 export)."""
    out = engine_folder.parent / "refused"
    args = ["build", "--onnx", str(engine_folder), "--backend", "ort-cpu", "--precision", "fp16"]
    code, _, err = run_cli([*args, "--out", str(out)], capsys)
    assert_one_line_error(code, err, "fp16")
    assert not out.exists()


def test_inspect_recognises_a_build_folder(engine_folder, capsys) -> None:
    assert run_cli(["build", "--onnx", str(engine_folder), "--backend", "ort-cpu"], capsys)[0] == 0
    code, out, err = run_cli(["inspect", str(engine_folder / "ort-cpu")], capsys)
    assert code == 0, err
    assert out.startswith(f"build folder {engine_folder / 'ort-cpu'}")
    assert "text_encoder:" in out and "built for ort-cpu" in out


# -- before anything loads (issue 13) -------------------------------------------------------------


def test_bad_request_is_refused_before_torch_loads(tmp_path) -> None:
    code = (
        "import sys; from gligen_rt.cli import main; "
        f"rc = main(['generate', '--prompt', 'x', '--steps', '0', '--out', {str(tmp_path / 'o.png')!r}]); "
        "print(rc, 'torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["2", "False"], r.stderr
    assert r.stderr.strip().startswith("error: steps")


def test_summary_not_repr_and_verbose_after_the_subcommand(tmp_path, capsys, caplog) -> None:
    caplog.set_level("DEBUG", logger="gligen_rt")
    code, _, err = run_cli(["generate", *TINY, "--out", str(tmp_path / "a.png")], capsys)
    assert code == 0, err
    info = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert any("'a room'" in m and "1 plms steps" in m for m in info), info
    assert not any("GenerationRequest(" in m for m in info)
    caplog.clear()
    code, _, err = run_cli(["generate", *TINY, "--out", str(tmp_path / "b.png"), "-v"], capsys)
    assert code == 0, err
    assert any("GenerationRequest(" in r.getMessage() for r in caplog.records if r.levelname == "DEBUG")


def test_progress_bars_stay_out_of_pipes(engine_folder, tmp_path, capsys) -> None:
    """generate and build with stderr not a terminal (captured here): no bar, only our lines."""
    code, _, err = run_cli(["generate", *TINY, "--out", str(tmp_path / "a.png")], capsys)
    assert code == 0, err
    args = ["build", "--onnx", str(engine_folder), "--backend", "ort-cpu", "--out", str(tmp_path / "b")]
    code2, _, err2 = run_cli(args, capsys)
    assert code2 == 0, err2
    for text in (err, err2):
        assert "\r" not in text and "it/s" not in text and "step/s" not in text and "engine/s" not in text


# -- help and flags (issue 13) ---------------------------------------------------------------------


def _help(command: str) -> str:
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "1000"  # one line per option: phrases are not broken by wrapping
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if a.dest == "command")
        return " ".join(sub.choices[command].format_help().split())
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def test_help_shows_defaults_and_output_naming() -> None:
    text = _help("generate")
    for phrase in (
        "denoising steps (default: 50)",
        "(default: 7.5)",
        "sampler (default: plms)",
        "(default: out.png)",
        "OUT_0.png",
        "--keypoints",
        "--cache-dir",
    ):
        assert phrase in text, phrase
    assert "(default: tiny-random)" in _help("bench")


def test_keypoints_flag_makes_persons(tmp_path) -> None:
    from gligen_rt.cli_request import request_from_args

    args = build_parser().parse_args(
        ["generate", "--prompt", "x", "--keypoints", PERSON, "--keypoints", PERSON]
    )
    request = request_from_args(args)
    assert len(request.persons) == 2 and request.persons[0].keypoints[3] is None
    assert request.persons[0].keypoints[0] == (0.5, 0.1)


def test_bench_defaults_survive_a_first_try(monkeypatch, tmp_path) -> None:
    from gligen_rt.benchmarks.cli import default_engine_dir

    args = build_parser().parse_args(["bench"])
    assert args.model == "tiny-random"
    monkeypatch.setenv("GLIGEN_RT_CACHE", str(tmp_path))
    assert default_engine_dir() == tmp_path / "bench-engines"


def test_tiny_random_engines_go_to_cache_dir_and_say_so(tmp_path, capsys, caplog) -> None:
    caplog.set_level("INFO", logger="gligen_rt")
    cache = tmp_path / "cache"
    args = [
        "generate",
        *TINY,
        "--backend",
        "ort-cpu",
        "--cache-dir",
        str(cache),
        "--out",
        str(tmp_path / "a.png"),
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert any(p.is_dir() for p in cache.iterdir())
    assert any("exporting" in r.getMessage() and str(cache) in r.getMessage() for r in caplog.records)


# -- structure (issue 9) ---------------------------------------------------------------------------


def test_subcommand_modules_do_not_import_the_cli_back() -> None:
    for path in ("export/cli.py", "benchmarks/cli.py", "runtime/cli.py", "engines/build.py"):
        tree = ast.parse((ROOT / path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "gligen_rt.cli":
                names = {a.name for a in node.names}
                assert "main" not in names, f"{path} imports gligen_rt.cli.main"


def test_in_process_bench_task_restores_torch_threads(monkeypatch, tmp_path) -> None:
    """The cause of an order-dependent failure: an in-process benchmark task left torch at 1 thread."""
    import torch

    from gligen_rt.benchmarks import harness, worker

    before = torch.get_num_threads()
    monkeypatch.setattr(
        worker, "run_task", lambda task: (torch.set_num_threads(before + 1), {"status": "ok"})[1]
    )
    assert harness.execute({}, tmp_path, isolate=False) == {"status": "ok"}
    assert torch.get_num_threads() == before
