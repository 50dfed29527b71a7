"""`gligen-rt generate` on the reference backend: outputs, request files, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from gligen_rt.cli import main
from gligen_rt.core.request import request_to_json
from tests.helpers import MODALITY_CASES, case_id, make_request

BASE = [
    "generate",
    "--model",
    "tiny-random",
    "--prompt",
    "a room",
    "--seed",
    "1",
    "--steps",
    "2",
    "--height",
    "64",
    "--width",
    "64",
]


def test_console_script_writes_png_and_overlay(tmp_path) -> None:
    beside = Path(sys.executable).parent / "gligen-rt"
    exe = str(beside) if beside.exists() else shutil.which("gligen-rt")
    if exe is None:
        pytest.skip("the gligen-rt console script is not installed (pip install -e .)")
    out = tmp_path / "out.png"
    cmd = [
        exe,
        "generate",
        "--model",
        "tiny-random",
        "--prompt",
        "a room",
        "--phrase",
        "a cat",
        "--box",
        "0.1,0.2,0.5,0.6",
        "--seed",
        "1",
        "--steps",
        "4",
        "--out",
        str(out),
        "--overlay",
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    assert Image.open(out).size == (128, 128)
    overlay = tmp_path / "out_overlay.png"
    assert overlay.exists() and Image.open(overlay).tobytes() != Image.open(out).tobytes()


def test_phrases_and_boxes_repeat(tmp_path, capsys) -> None:
    out = tmp_path / "two.png"
    args = BASE + [
        "--phrase",
        "a cat",
        "--box",
        "0.1,0.2,0.5,0.6",
        "--phrase",
        "a dog",
        "--box",
        "0.5,0.5,0.9,0.9",
        "--sampler",
        "ddim",
        "--beta",
        "0.5",
        "--guidance",
        "5",
        "--negative-prompt",
        "blurry",
        "--num-images",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert (tmp_path / "two_0.png").exists() and (tmp_path / "two_1.png").exists()


@pytest.mark.parametrize("case", MODALITY_CASES, ids=case_id)
def test_request_file_any_modality(case, tmp_path) -> None:
    modality, inpaint = case
    request = make_request(modality, inpaint, tmp_path)
    (tmp_path / "req.json").write_text(json.dumps(request_to_json(request)))
    out = tmp_path / "out.png"
    args = [
        "generate",
        "--model",
        "tiny-random",
        "--modality",
        modality,
        "--request",
        str(tmp_path / "req.json"),
        "--out",
        str(out),
        "--overlay",
    ] + (["--inpaint"] if inpaint else [])
    assert main(args) == 0
    assert Image.open(out).size == (64, 64)


BAD = {
    "box outside [0,1]": ["--phrase", "a cat", "--box", "0.1,0.2,1.5,0.6"],
    "x0 >= x1": ["--phrase", "a cat", "--box", "0.5,0.2,0.1,0.6"],
    "NaN": ["--phrase", "a cat", "--box", "nan,0.2,0.5,0.6"],
    "counts differ": ["--phrase", "a cat", "--phrase", "a dog", "--box", "0.1,0.2,0.5,0.6"],
    "more than 30": sum((["--phrase", f"p{i}", "--box", "0.1,0.2,0.5,0.6"] for i in range(31)), []),
    "unknown layout": ["--checkpoint", "{tmp}/not_a_checkpoint.txt"],
    "unreadable checkpoint": ["--checkpoint", "{tmp}/missing.bin"],
    "unreadable request": ["--request", "{tmp}/missing.json"],
    "bad sampler steps": ["--steps", "0"],
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_line_nonzero_and_writes_nothing(name, tmp_path, capsys) -> None:
    (tmp_path / "not_a_checkpoint.txt").write_text("hello")
    extra = [a.replace("{tmp}", str(tmp_path)) for a in BAD[name]]
    args = BASE + extra + ["--out", str(tmp_path / "o" / "out.png")]
    if "--checkpoint" in extra:  # --model and --checkpoint are exclusive
        args = args[:1] + args[3:]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("error: ") and "\n" not in err, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_module_entry_point_reports_errors(tmp_path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gligen_rt.cli",
            *BASE,
            "--phrase",
            "x",
            "--box",
            "0,0,2,2",
            "--out",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_generate_from_checkpoint_equals_the_preset(layout, tmp_path) -> None:
    """A checkpoint written in a real layout generates the same image as the model it came from."""
    from gligen_ref.checkpoint import save_diffusers, save_original
    from gligen_ref.model import build_model
    from gligen_rt.core.config import tiny_random
    from gligen_rt.core.tokenizer import ClipTokenizer

    model = build_model(tiny_random("text-box"), 0)
    path = tmp_path / ("gligen.bin" if layout == "original" else "gligen-diffusers")
    if layout == "original":
        save_original(model, path)
    else:
        save_diffusers(model, path, tokenizer=ClipTokenizer.default())
    request = BASE[3:] + ["--phrase", "a cat", "--box", "0.1,0.2,0.5,0.6"]
    assert main(["generate", "--checkpoint", str(path), *request, "--out", str(tmp_path / "ckpt.png")]) == 0
    assert main(["generate", "--model", "tiny-random", *request, "--out", str(tmp_path / "preset.png")]) == 0
    a, b = Image.open(tmp_path / "ckpt.png"), Image.open(tmp_path / "preset.png")
    assert a.tobytes() == b.tobytes()
