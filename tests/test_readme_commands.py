"""Every `gligen-rt` command the READMEs show runs as written.

The commands are parsed from the code blocks of README.md and benchmarks/README.md (indented or
fenced; `\\` continuations joined; in `a && b && gligen-rt ...` the gligen-rt part), never listed
here, so a changed README line is what gets tested. They run in order, in one scratch folder
holding a link to the repository's `examples/`, so relative outputs land there and a command can
read what an earlier one wrote; an absolute output folder (`--out-dir /tmp/x`) is moved into the
scratch folder: the only substitution. A command is skipped, with the reason, when it needs what
cannot exist here: a real checkpoint or what is made from it, a trained model, an NVIDIA GPU, a
placeholder (`...`), or a command that does not end in test time (`serve`, `train`).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from gligen_rt.cli import main
from gligen_rt.engines.gpu import gpu_count

ROOT = Path(__file__).resolve().parent.parent
READMES = ("README.md", "benchmarks/README.md")
GPU_BACKENDS = ("tensorrt", "ort-cuda", "ort-trt", "tensorrt-rtx")
OUTPUT_FLAGS = ("--out", "--out-dir")


def code_blocks(text: str) -> list[str]:
    """The lines of every code block: fenced (```) or indented by 4 spaces after a blank line."""
    lines, out, fenced, indented = text.splitlines(), [], False, False
    for i, line in enumerate(lines):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            out.append(line)
            continue
        starts = line.startswith("    ") and (indented or i == 0 or not lines[i - 1].strip())
        indented = bool(line.strip()) and (starts or (indented and line.startswith("    ")))
        if indented:
            out.append(line.strip())
    return out


def commands(text: str) -> list[str]:
    """`gligen-rt ...` commands in the code blocks, continuations joined, shell prefixes dropped."""
    joined: list[str] = []
    for line in code_blocks(text):
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1].rstrip() + " " + line.strip()
        else:
            joined.append(line.strip())
    found = []
    for line in joined:
        for part in re.split(r"\s*(?:&&|;)\s*", line):
            part = part.split(" #", 1)[0].strip()  # an explanatory comment after the command
            if part.startswith("gligen-rt ") and not re.match(r"gligen-rt \w+$", part):
                found.append(part)
    return found


def readme_commands() -> list[tuple[str, str]]:
    return [(name, c) for name in READMES for c in commands((ROOT / name).read_text())]


# Subcommands that do not end by themselves in test time, and the tests that cover them instead.
LONG_RUNNING = {
    "serve": "starts a server that runs until stopped (tests/test_serve*.py run it)",
    "train": "trains for minutes to hours (tests/test_train.py runs the stages in miniature)",
}
INPUT_FOLDERS = ("--engines", "--onnx", "--data", "--init", "--runs")


def skip_reason(argv: list[str], cwd: Path) -> str | None:
    if "..." in argv:
        return "a template with a placeholder (...)"
    if argv and argv[0] in LONG_RUNNING:
        return LONG_RUNNING[argv[0]]
    flags = dict(zip(argv, argv[1:]))
    if "--checkpoint" in flags and not (cwd / flags["--checkpoint"]).exists():
        return f"needs a released checkpoint ({flags['--checkpoint']}), not in the repository"
    model = flags.get("--model", "")
    inputs = [flags.get(f) for f in INPUT_FOLDERS] + [model if "/" in model else None]  # a model folder
    for value in inputs:
        if value is not None and not (cwd / value).exists():
            return f"needs {value}, written by an earlier command skipped here (a released checkpoint or training)"
    if flags.get("--backend") in GPU_BACKENDS and gpu_count()[0] == 0:
        return f"--backend {flags['--backend']} needs an NVIDIA GPU and its driver"
    if flags.get("--device") == "cuda" and gpu_count()[0] == 0:
        return "--device cuda needs an NVIDIA GPU"
    return None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    (folder / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    return folder


def test_readmes_show_commands_and_a_line_per_modality() -> None:
    cmds = [c for _, c in readme_commands()]
    assert cmds and cmds[0].startswith("gligen-rt generate")  # the main command comes first
    text = " ".join(cmds)
    for modality in ("text-box", "text-image-box", "keypoint", "hed", "canny", "depth", "normal", "sem"):
        assert f"--model tiny-random --modality {modality} " in text, modality
    assert "--model tiny-random --inpaint " in text
    assert any(c.startswith("gligen-rt bench ") for c in cmds)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("readme", "command"),
    readme_commands(),
    ids=[f"{r}-{i}-{' '.join(c.split()[1:4])}" for i, (r, c) in enumerate(readme_commands())],
)
def test_readme_command_runs_as_written(readme, command, scratch, monkeypatch, capfd) -> None:
    argv = shlex.split(command)[1:]
    reason = skip_reason(argv, scratch)
    if reason:
        pytest.skip(reason)
    for i, arg in enumerate(argv[:-1]):
        if arg in OUTPUT_FLAGS and Path(argv[i + 1]).is_absolute():
            argv[i + 1] = str(scratch / Path(argv[i + 1]).name)
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("GLIGEN_RT_CACHE", str(scratch / "cache"))
    code = main(argv)
    err = capfd.readouterr().err  # the worker processes' stderr too
    assert code == 0, (command, err[-2000:])
    assert "Traceback" not in err and "TracerWarning" not in err, err[-2000:]
