"""Loading and writing released GLIGEN checkpoints.

Layouts:
- ``original``: the authors' single torch.save file (gligen/gligen-* repos; all eight modalities and
  the two inpainting models), see original.py;
- ``diffusers``: a diffusers pipeline folder (box modalities, generation and inpainting), see
  diffusers_folder.py.

Both map onto GLIGENModel's state dict (keys.py). Every failure is a one-line CheckpointError.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gligen_ref.checkpoint.diffusers_folder import load_diffusers, save_diffusers
from gligen_ref.checkpoint.keys import key_map
from gligen_ref.checkpoint.original import detect_modality, load_original, save_original, sd_schedule_buffers
from gligen_ref.model import GLIGENModel
from gligen_rt.core.config import ModelConfig
from gligen_rt.core.errors import CheckpointError
from gligen_rt.core.modality import Modality
from gligen_rt.core.tokenizer import ClipTokenizer

__all__ = [
    "LoadedCheckpoint",
    "detect_layout",
    "detect_modality",
    "file_sha256",
    "key_map",
    "load_checkpoint",
    "load_diffusers",
    "load_original",
    "save_diffusers",
    "save_original",
    "sd_schedule_buffers",
]

Layout = Literal["original", "diffusers"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: GLIGENModel
    config: ModelConfig
    layout: Layout
    path: Path
    tokenizer: ClipTokenizer


def detect_layout(path: str | os.PathLike[str]) -> Layout:
    """'diffusers' for a pipeline folder, 'original' for a torch.save file (content is sniffed, not
    the name). CheckpointError (one line) for anything else or an unreadable path."""
    p = Path(path)
    try:
        if p.is_dir():
            if (p / "model_index.json").is_file() or (p / "unet" / "config.json").is_file():
                return "diffusers"
            raise CheckpointError(
                f"{p}: unknown checkpoint layout (a folder without model_index.json or unet/)"
            )
        if not p.exists():
            raise CheckpointError(f"{p}: no such file or folder")
        if zipfile.is_zipfile(p):
            return "original"
        with open(p, "rb") as f:
            head = f.read(2)
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "original"
    raise CheckpointError(
        f"{p}: unknown checkpoint layout (expected an original GLIGEN .bin/.pth written by torch.save, or a "
        "diffusers folder; the file may be truncated)"
    )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    modality: Modality | str | None = None,
    sd_conv_in: str | os.PathLike[str] | None = None,
    clip_vision: str | os.PathLike[str] | None = None,
    projection_matrix: str | os.PathLike[str] | None = None,
    tokenizer: ClipTokenizer | str | os.PathLike[str] | None = None,
) -> LoadedCheckpoint:
    """Any supported checkpoint -> LoadedCheckpoint.

    The keyword arguments other than ``tokenizer`` are those of load_original (``modality`` is also
    checked against a diffusers folder). ``tokenizer`` (object or path) overrides the default:
    ``<folder>/tokenizer`` for diffusers folders, ClipTokenizer.default() for original files.
    """
    p = Path(path)
    layout = detect_layout(p)
    if layout == "original":
        model, config = load_original(
            p,
            modality=modality,
            sd_conv_in=sd_conv_in,
            clip_vision=clip_vision,
            projection_matrix=projection_matrix,
        )
    else:
        extra = [n for n, v in (("sd_conv_in", sd_conv_in), ("clip_vision", clip_vision)) if v is not None]
        if projection_matrix is not None:
            extra.append("projection_matrix")
        if extra:
            raise CheckpointError(
                f"{p}: {', '.join(extra)} apply to original files only; a diffusers folder has them"
            )
        model, config = load_diffusers(p)
        if modality is not None and Modality(modality) is not config.modality:
            raise CheckpointError(
                f"{p}: the folder is a {config.modality.value} pipeline, not {Modality(modality).value}"
            )
    if isinstance(tokenizer, ClipTokenizer):
        tok = tokenizer
    elif tokenizer is not None:
        tok = ClipTokenizer.from_path(tokenizer)
    elif layout == "diffusers":
        tok = ClipTokenizer.from_folder(p / "tokenizer")
    else:
        tok = ClipTokenizer.default()
    return LoadedCheckpoint(model=model, config=config, layout=layout, path=p, tokenizer=tok)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, streamed. For a folder: one sha256 over its weight files
    (*.safetensors, *.bin, *.pth, *.pt, *.ckpt, in sorted relative-path order), each fed as
    ``relative/path`` + NUL + content."""
    p = Path(path)
    h = hashlib.sha256()
    try:
        if p.is_dir():
            files = sorted(
                (f for f in p.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)),
                key=lambda f: f.relative_to(p).as_posix(),
            )
            if not files:
                raise CheckpointError(f"{p}: no weight files to hash")
            for f in files:
                h.update(f.relative_to(p).as_posix().encode() + b"\0")
                _feed(h, f)
        else:
            _feed(h, p)
    except OSError as exc:
        raise CheckpointError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    return h.hexdigest()


def _feed(h: hashlib._Hash, path: Path, chunk: int = 1 << 20) -> None:
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
