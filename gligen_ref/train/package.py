"""Packaging a trained model for the wheel: fp16 diffusers folder + FP32 engine folder + model card.

OUT/model/     the gligen run's model/ with every weight file stored as fp16 safetensors
               (``*.fp16.safetensors``; the loader casts them to float32)
OUT/engines/   `export_engines` of OUT/model (so the engines hold exactly the weights the
               reference loads), FP32 ONNX + manifests + tokenizer; a single-UNet folder (steps
               with gate 0 run `unet` with gate 0, which equals `unet_plain`) with the token-
               embedding table stored as FP16 (lossless: the weights are FP16; export/compact.py)
OUT/README.md  the model card: what was trained, the commands, data seed, steps, wall times,
               final losses, sha256 of both folders
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from gligen_rt.core.errors import DataError


def to_fp16_folder(src: Path, dst: Path) -> None:
    """Copy a diffusers folder, storing each ``*.safetensors`` as ``*.fp16.safetensors`` in float16."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in sorted(dst.rglob("*.safetensors")):
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(f)).items()}
        save_file(tensors, str(f.with_name(f.name.replace(".safetensors", ".fp16.safetensors"))))
        f.unlink()


def _runs(runs: Path) -> dict[str, dict]:
    """Run folder -> run.json, in training order: vae, base, gligen, each followed by its
    continuations (folders base-2, ..., gligen-2, gligen-3, ...: further runs of that stage)."""
    out = {}
    for stage in ("vae", "base", "gligen"):
        path = runs / stage / "run.json"
        if not path.is_file():
            raise DataError(f"{path}: missing (train the {stage} stage into {runs / stage} first)")
        out[stage] = json.loads(path.read_text(encoding="utf-8"))
        if stage == "vae":
            continue
        more = [p for p in runs.glob(f"{stage}-*") if p.name.removeprefix(f"{stage}-").isdigit()]
        for folder in sorted(more, key=lambda p: int(p.name.removeprefix(f"{stage}-"))):
            if not (folder / "run.json").is_file():
                raise DataError(f"{folder / 'run.json'}: missing (finish that run, or remove {folder})")
            out[folder.name] = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    return out


def _stage(name: str) -> str:
    return name.split("-")[0]


def _command(stage: str, run: dict) -> str:
    a = run["args"]
    parts = [f"gligen-rt train {stage} --data {a['data']} --out {a['out']}"]
    if a.get("init"):
        parts.append(f"--init {a['init']}")
    if a.get("grounding_from"):
        parts.append(f"--grounding-from {a['grounding_from']}")
    parts.append(f"--steps {a['steps']} --batch {a['batch']} --lr {a['lr']:g} --warmup {a['warmup']}")
    parts.append(f"--save-every {a['save_every']} --seed {a['seed']}")
    defaults = {
        "gate_lr_scale": 1.0,
        "high_noise": 0.0,
        "dense_after": 0,
        "drop_caption": 0.1,
        "drop_grounding": 0.1,
        "ema": 0.0,
        "clip": 1.0,
    }
    if stage == "vae" and a.get("crop") is not None:
        parts.append(f"--crop {a['crop']}")
    for key, default in defaults.items():
        if key in a and a[key] != default and (stage == "gligen" or key in ("ema", "clip")):
            parts.append(f"--{key.replace('_', '-')} {a[key]:g}")
    if a.get("bf16"):
        parts.append("--bf16")
    return " ".join(parts)


def model_card(
    runs: dict[str, dict], sha_model: str, sha_engines: str, sizes: dict[str, int], notes: str
) -> str:
    info = runs["gligen"]["data_info"]
    lines = [
        "# tiny: a trained tiny GLIGEN (text-box)",
        "",
        "A GLIGEN text-box model on a tiny Stable-Diffusion-shaped base, trained from scratch on the",
        "synthetic scenes of `gligen_ref/train/scenes.py` (coloured circles, squares, triangles and",
        "diamonds on a grey floor, 128x128 px). It knows phrases `<colour> <shape>` with colours "
        + ", ".join(info.get("colours", {}))
        + " and shapes "
        + ", ".join(info.get("shapes", []))
        + ".",
        "",
        "Trained modality: **text-box** only. Every other modality (text-image-box, keypoint, hed, canny,",
        "depth, normal, sem, inpainting) exists only with random weights as `--model tiny-random`.",
        "",
        f"Architecture: preset `tiny` (gligen_rt/core/config.py), model `{runs['gligen']['model']}`.",
        "",
        "## Training (2-core CPU)",
        "",
        f"Data: `gligen-rt train scenes --out data --count {info.get('count')} --seed {info.get('seed')}`"
        f" ({runs['gligen']['samples']} scenes, data seed {info.get('seed')}).",
        "",
        "| stage | trains | steps | batch | wall time | final loss (mean of last 100 steps) | trainable parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    what = {
        "vae": "KL autoencoder (factor 8)",
        "base": "text encoder + UNet on captions (no boxes)",
        "gligen": "fusers + grounding tokenizer, base frozen",
    }
    for stage, r in runs.items():
        lines.append(
            f"| {stage} | {what[_stage(stage)]} | {r['steps']} | {r['batch']} | {r['wall_s'] / 60:.1f} min | "
            f"{r['final_loss_mean_last_100']:.4f} | {r['trainable_parameters']:,} |"
        )
    lines += ["", "Commands, in order:", "", "```"]
    lines += [_command(_stage(stage), r) for stage, r in runs.items()]
    lines += [
        "gligen-rt train package --runs runs --out gligen_rt/models/tiny",
        "```",
        "",
        "## Files",
        "",
        f"- `model/`: diffusers folder, fp16 safetensors ({sizes['model'] / 1e6:.1f} MB), sha256 over its "
        f"weight files `{sha_model}`",
        f"- `engines/`: FP32 ONNX engine folder exported from `model/` ({sizes['engines'] / 1e6:.1f} MB), "
        f"sha256 over its graphs `{sha_engines}`",
        "",
    ]
    if notes:
        lines += ["## Notes", "", notes, ""]
    return "\n".join(lines)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _hash_folder(path: Path, suffixes: tuple[str, ...]) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted((f for f in path.rglob("*") if f.is_file() and f.name.endswith(suffixes)), key=str):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def package(runs: Path, out: Path, notes: str = "") -> Path:
    """Build OUT (see the module docstring) from RUNS/{vae,base[,base-2,...],gligen[,gligen-2,...]}
    (the model is the last run's); atomic (temporary folder)."""
    from gligen_rt.engines.spec import UNET_PLAIN, specs_for
    from gligen_rt.export.api import export_engines
    from gligen_rt.export.compact import store_token_embedding_fp16

    runs, out = Path(runs), Path(out)
    records = _runs(runs)
    model_src = runs / list(records)[-1] / "model"
    if not (model_src / "model_index.json").is_file():
        raise DataError(f"{model_src}: no trained model (run the gligen stage first)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        to_fp16_folder(model_src, tmp / "model")
        from gligen_ref.checkpoint import load_checkpoint

        source = load_checkpoint(tmp / "model")
        engines = [n for n in specs_for(source.model.config) if n != UNET_PLAIN]
        with torch.no_grad():
            export_engines(str(tmp / "model"), tmp / "engines", "fp32", progress=False, engines=engines)
        store_token_embedding_fp16(tmp / "engines")
        sizes = {"model": _size(tmp / "model"), "engines": _size(tmp / "engines")}
        card = model_card(
            records,
            _hash_folder(tmp / "model", (".safetensors",)),
            _hash_folder(tmp / "engines", (".onnx", ".onnx.data")),
            sizes,
            notes,
        )
        (tmp / "README.md").write_text(card, encoding="utf-8")
        for f in [tmp, *tmp.rglob("*")]:  # temporary files are private: the package is readable by all
            f.chmod(0o755 if f.is_dir() else 0o644)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            shutil.rmtree(old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
