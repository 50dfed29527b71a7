"""`export_engines`: a GLIGEN model -> an engine folder (every engine's ONNX, tokenizer, manifests).

    DIR/manifest.json            FolderManifest: model config, precision, engines, envelope, parity
    DIR/tokenizer/               vocab.json + merges.txt
    DIR/<engine>.onnx[.data]     one per engine spec, checked against the reference before it is kept
    DIR/<engine>.json            per-engine manifest (spec fingerprint, sha256s, parity, node counts)

The whole folder is written as ``DIR.tmp-*`` beside DIR and renamed at the end, so an interrupted or
failed export leaves DIR as it was (an existing engine folder is replaced only after success).

Precision and flavor (engines/manifest.py FLAVORS):

| precision | fp16 flavor | graphs | for |
|---|---|---|---|
| fp32 | - | FP32 | every backend |
| fp16 | strongly-typed (default) | FP16 inside, FP32 islands (export/fp16.py), FP32 I/O | TensorRT strongly typed / TensorRT-RTX / TensorRT 11, ORT, OpenVINO |
| fp16 | fp16-flag | FP32 graphs, manifest flavor "fp32-fp16-flag" | TensorRT 10 (JetPack 6: 10.3) built with BuilderFlag.FP16 |

The grounding engine is always FP32 (flavor "fp32"): the Fourier embedding's arguments reach 56 rad.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gligen_ref.token_downsample import check_factor, token_downsampled
from gligen_rt.core.config import to_dict
from gligen_rt.core.modality import Modality
from gligen_rt.engines import manifest as M
from gligen_rt.engines import spec as S
from gligen_rt.export.fuse import MATMUL, SDPA, count_fusers, fuse_fusers
from gligen_rt.export.onnx_export import (
    DEFAULT_OPSET,
    DYNAMO_MIN_OPSET,
    EXTERNAL_DATA_MIN_BYTES,
    ExportResult,
    export_engine,
    umask,
)
from gligen_rt.export.parity import ExportError

log = logging.getLogger(__name__)

PRESET_NAMES = ("tiny-random", "sd14")  # random-weight models (build_model(config, seed))
FP16_FLAVORS = {"strongly-typed": "fp16-strongly-typed", "fp16-flag": "fp32-fp16-flag"}
ALWAYS_FP32 = (S.GROUNDING,)


@dataclass(frozen=True)
class SourceModel:
    """The model to export and where it came from."""

    model: nn.Module
    config: Any  # gligen_rt.core.config.ModelConfig
    tokenizer: Any  # gligen_rt.core.tokenizer.ClipTokenizer
    checkpoint_sha256: str | None
    description: str


def load_source(
    checkpoint: str | os.PathLike[str],
    modality: Modality | str | None = None,
    inpaint: bool = False,
    seed: int = 0,
    **checkpoint_options: Any,
) -> SourceModel:
    """``"tiny-random"`` / ``"sd14"``: the preset with random weights (seed), else a checkpoint path
    (gligen_ref.checkpoint.load_checkpoint; ``checkpoint_options`` are its keyword arguments)."""
    from gligen_rt.core.tokenizer import ClipTokenizer

    if str(checkpoint) in PRESET_NAMES and not Path(checkpoint).exists():
        from gligen_ref.model import build_model
        from gligen_rt.core.config import preset

        config = preset(str(checkpoint), modality or Modality.TEXT_BOX, inpaint)
        return SourceModel(
            build_model(config, seed),
            config,
            ClipTokenizer.default(),
            None,
            f"{checkpoint} preset, random weights, seed {seed}",
        )
    from gligen_ref.checkpoint import file_sha256, load_checkpoint

    path = Path(checkpoint)
    if inpaint:
        log.info("--inpaint is ignored for a checkpoint: the checkpoint says whether it inpaints")
    loaded = load_checkpoint(path, modality=modality, **checkpoint_options)
    return SourceModel(
        loaded.model.float().eval(),
        loaded.config,
        loaded.tokenizer,
        file_sha256(path),
        f"{loaded.layout} checkpoint {path.name}",
    )


def export_engines(
    checkpoint: str | os.PathLike[str] = "tiny-random",
    out_dir: str | os.PathLike[str] = "engines",
    precision: str = "fp32",
    envelope: S.ShapeEnvelope | None = None,
    modality: Modality | str | None = None,
    inpaint: bool = False,
    opset: int = DEFAULT_OPSET,
    fuse: bool = True,
    progress: bool = True,
    *,
    fp16_flavor: str = "strongly-typed",
    engines: Sequence[str] | None = None,
    count_unfused: bool = False,
    seed: int = 0,
    external_data_min_bytes: int = EXTERNAL_DATA_MIN_BYTES,
    source: SourceModel | None = None,
    threads: int | None = None,
    gate_skip: bool = False,
    feature_cache: bool = False,
    token_downsample: int = 1,
    **checkpoint_options: Any,
) -> Path:
    """Export every engine of a GLIGEN model into the engine folder ``out_dir``; returns its path.

    Args:
        checkpoint: "tiny-random" or "sd14" (preset with random weights), or a checkpoint file / folder.
        out_dir: the engine folder (replaced only after everything passed).
        precision: "fp32" or "fp16" (see the module docstring for ``fp16_flavor``).
        envelope: request shape ranges (default: around the model's default size).
        modality, inpaint: the preset's modality and inpainting flag (for a checkpoint, modality
            disambiguates; inpainting comes from the checkpoint).
        opset: ONNX opset (18 default; >= 23 exports the fusers as the standard Attention op).
        fuse: replace every fuser by the fused gated attention (export/fuse.py).
        progress: a progress bar over the engines (stderr).
        fp16_flavor: "strongly-typed" (FP16 in the graph) or "fp16-flag" (FP32 graphs for a
            TensorRT-10 build with the FP16 flag).
        engines: a subset of the model's engines (default: all).
        count_unfused: also export the UNet without fusion (not kept) to record its node count.
        seed: the preset's weight seed and the check inputs' seed.
        external_data_min_bytes: weights above this go to ``<engine>.onnx.data``.
        source: an already loaded model (then ``checkpoint``/``modality``/``inpaint`` are ignored).
        threads: CPU threads for PyTorch and ONNX Runtime during export and checks (default: theirs).
        gate_skip: one UNet for both phases: every fuser sits in an ONNX If on ``gate != 0``, so
            plain steps cost a plain UNet's time; ``unet_plain`` is then not exported unless named
            in ``engines`` (half the UNet weights in memory).
        feature_cache: also export ``unet_shallow``, and give ``unet`` / ``unet_plain`` the ``deep``
            output it reuses (engines/spec.py ``specs_for``): what a request's ``feature_cache``
            runs on.
        token_downsample: 1 (off), 2 or 4: the first level's attentions take keys and values from
            the token grid pooled that much (gligen_ref/token_downsample.py; an approximation,
            recorded in the manifest); the model is unchanged after the export.

    Raises:
        ExportError / ParityError: an engine failed its checks (nothing is written);
        CheckpointError: the checkpoint cannot be loaded.
    """
    if precision not in M.PRECISIONS:
        raise ExportError(f"precision {precision!r} is not one of {M.PRECISIONS}")
    if fp16_flavor not in FP16_FLAVORS:
        raise ExportError(f"fp16 flavor {fp16_flavor!r} is not one of {tuple(FP16_FLAVORS)}")
    try:
        check_factor(token_downsample)
    except ValueError as e:
        raise ExportError(str(e)) from None
    out = Path(out_dir)
    _check_replaceable(out)
    src = source or load_source(checkpoint, modality, inpaint, seed, **checkpoint_options)
    config = src.config
    specs = S.specs_for(config, envelope, feature_cache=feature_cache)
    unknown = [n for n in engines or () if n not in specs]
    if unknown:
        raise ExportError(f"{config.key} has no engines {unknown}: it has {list(specs)}")
    names = [n for n in specs if engines is None or n in engines]  # in build order
    if gate_skip and engines is None:
        names.remove(S.UNET_PLAIN)
    if not names:
        raise ExportError("no engines to export: name at least one")
    env = envelope or S.ShapeEnvelope.for_config(config)
    form = SDPA if opset >= DYNAMO_MIN_OPSET else MATMUL
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    t0 = time.perf_counter()
    results: dict[str, ExportResult] = {}
    with_fusers = (S.UNET, S.UNET_SHALLOW_GROUNDED)  # the engines that run the fusers
    try:
        with token_downsampled(src.model, token_downsample) as reference:
            grounded = (
                fuse_fusers(reference, form) if fuse and any(n in names for n in with_fusers) else reference
            )
            src.tokenizer.save(work / "tokenizer")
            bar = _progress(names, progress)
            for name in bar:
                if hasattr(bar, "set_postfix_str"):
                    bar.set_postfix_str(name)
                engine_precision, flavor = _precision_of(name, precision, fp16_flavor)
                results[name] = export_engine(
                    grounded if name in with_fusers else reference,
                    specs[name],
                    work,
                    config=config,
                    reference=reference,
                    precision=engine_precision,
                    flavor=flavor,
                    opset=opset,
                    checkpoint_sha256=src.checkpoint_sha256,
                    external_data_min_bytes=external_data_min_bytes,
                    unfused_model=reference if (name == S.UNET and fuse and count_unfused) else None,
                    export_info={
                        "fused": bool(fuse and name in with_fusers),
                        "attention_form": form if fuse and name in with_fusers else None,
                        "fusers": count_fusers(grounded)[1] if name == S.UNET else 0,
                    },
                    seed=seed,
                    threads=threads,
                    gate_skip=gate_skip and name == S.UNET,
                )
        folder = M.FolderManifest(
            model_config=to_dict(config),
            precision=precision,
            engines=tuple(names),
            envelope=env.to_dict(),
            checkpoint_sha256=src.checkpoint_sha256,
            tokenizer="tokenizer",
            parity={n: r.manifest.parity for n, r in results.items()},
            extra={
                "flavor": FP16_FLAVORS[fp16_flavor] if precision == "fp16" else "fp32",
                "opset": opset,
                "fused": fuse,
                "gate_skip": gate_skip,
                "feature_cache": feature_cache,
                "token_downsample": token_downsample,
                "source": src.description,
                "exporter": {"torch": torch.__version__, "onnx": _version("onnx")},
                "export_seconds": round(time.perf_counter() - t0, 1),
            },
        )
        M.write_manifest(work / M.FOLDER_MANIFEST, folder)
        (work / M.FOLDER_MANIFEST).chmod(0o666 & ~umask())
        work.chmod(0o777 & ~umask())  # mkdtemp made it private
        _replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info(
        "exported %d engines of %s to %s in %.0f s", len(names), config.key, out, time.perf_counter() - t0
    )
    return out


def _precision_of(name: str, precision: str, fp16_flavor: str) -> tuple[str, str]:
    """(graph precision, manifest flavor) of one engine."""
    if precision == "fp32" or name in ALWAYS_FP32:
        return "fp32", "fp32"
    if FP16_FLAVORS[fp16_flavor] == "fp32-fp16-flag":
        return "fp32", "fp32-fp16-flag"
    return "fp16", "fp16-strongly-typed"


def _check_replaceable(out: Path) -> None:
    """An existing ``out`` must be an engine folder (it has a manifest.json) or empty: never replace
    a folder of something else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder: choose another --out")
    if (out / M.FOLDER_MANIFEST).is_file() or not any(out.iterdir()):
        return
    raise ExportError(
        f"{out} exists and is not an engine folder (no {M.FOLDER_MANIFEST}): choose another --out"
    )


def _replace_dir(new: Path, out: Path) -> None:
    """Put the finished folder ``new`` at ``out``; an existing ``out`` is moved aside first and
    removed only once ``new`` is in place."""
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
    os.rmdir(old)
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _progress(items: list[str], enabled: bool) -> Any:
    from gligen_rt.core.progress import progress

    return progress(items, desc="export", unit="engine", show=enabled)


def _version(module: str) -> str | None:
    with contextlib.suppress(ImportError):
        return __import__(module).__version__
    return None


__all__ = ["SourceModel", "export_engines", "load_source"]
