"""The tiny models as engine folders.

`--model tiny`, the trained text-box model, ships in the package (`trained_tiny_dir()`: engines
included, nothing to export). `--model tiny-random`, random weights for every modality, is exported
once into a cache folder and reused:

    ~/.cache/gligen-rt/<key>/        ($GLIGEN_RT_CACHE overrides the root)

<key> names the model (tiny-[inpaint-]<modality>-seed<s>-<precision>) and ends with a digest of
the engine specs and of the source files that shape the exported graphs (gligen_ref, export), so
a code change never reuses a stale folder. Exporting needs torch (the `export` extra); it happens
once, into a temporary folder renamed into place, so a reader never sees half a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from gligen_rt.core.errors import BackendUnavailable
from gligen_rt.core.modality import Modality
from gligen_rt.engines.manifest import FOLDER_MANIFEST
from gligen_rt.engines.spec import UNET_PLAIN, canonical_json, specs_for

log = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parent.parent  # the repository / installed tree


TRAINED_TINY_MODALITY = Modality.TEXT_BOX  # the one modality the shipped tiny model was trained for
# Its classifier-free guidance scale: a small model on flat-coloured scenes oversaturates under SD's
# 7.5 (colours pushed past the phrase's), so fewer objects come out in their colour and box. The
# sweep behind this value is in its card (gligen_rt/models/tiny/README.md).
TRAINED_TINY_GUIDANCE = 2.0


def trained_tiny_dir() -> Path:
    """The trained tiny model shipped in the package (`--model tiny`): model/ (diffusers folder, FP16
    safetensors), engines/ (its FP32 engine folder) and README.md (the model card)."""
    import gligen_rt

    return Path(gligen_rt.__file__).resolve().parent / "models" / "tiny"


def default_cache_dir() -> Path:
    """~/.cache/gligen-rt, or $GLIGEN_RT_CACHE."""
    env = os.environ.get("GLIGEN_RT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gligen-rt"


def _tiny_config(modality: Modality | str, inpaint: bool):  # -> gligen_ref ModelConfig (torch-free)
    from gligen_rt.core.config import tiny_random

    return tiny_random(Modality(modality), inpaint)


def _source_digest() -> str:
    """sha256 over the sources that determine exported graphs (gligen_ref/, export/, engines/spec.py)."""
    import gligen_ref
    import gligen_rt.engines.spec as spec_module
    import gligen_rt.export as export_pkg

    h = hashlib.sha256()
    folders = [Path(gligen_ref.__file__).parent, Path(export_pkg.__file__).parent]
    files = sorted(p for d in folders for p in d.rglob("*.py")) + [Path(spec_module.__file__)]
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def tiny_key(
    modality: Modality | str = Modality.TEXT_BOX,
    inpaint: bool = False,
    precision: str = "fp32",
    seed: int = 0,
    plain: bool = True,
    feature_cache: bool = False,
) -> str:
    """The cache folder name of one tiny engine folder (`plain`: with the unet_plain engine;
    `feature_cache`: with unet_shallow and the UNets' deep output)."""
    config = _tiny_config(modality, inpaint)
    h = hashlib.sha256()
    for spec in specs_for(config, feature_cache=feature_cache).values():
        h.update(canonical_json(spec).encode())
    h.update(_source_digest().encode())
    single = "" if plain else "-single-unet"
    cache = "-feature-cache" if feature_cache else ""
    return f"{config.key}-seed{seed}-{precision}{single}{cache}-{h.hexdigest()[:12]}"


def tiny_engines(
    modality: Modality | str = Modality.TEXT_BOX,
    inpaint: bool = False,
    *,
    precision: str = "fp32",
    seed: int = 0,
    plain: bool = True,
    feature_cache: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The engine folder of build_model(tiny_random(modality, inpaint), seed) at `precision`, exported on first use.

    plain: also export unet_plain (False: a single-UNet folder; gate-0 steps run `unet` with gate 0).
    feature_cache: also export unet_shallow (`gligen-rt export --feature-cache`).
    cache_dir: the cache root (default: default_cache_dir()).
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / tiny_key(modality, inpaint, precision, seed, plain, feature_cache)
    if (final / FOLDER_MANIFEST).is_file():
        return final
    # Several processes may ask for the same folder at once (test workers, servers starting
    # together): one exports, the others wait for it and then find the folder in place.
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f".{final.name}.lock"):
        if (final / FOLDER_MANIFEST).is_file():
            return final
        return _export_tiny(modality, inpaint, precision, seed, plain, feature_cache, final)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory lock on ``lock_path`` across processes (POSIX flock; elsewhere none is taken)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent first exports may both run; the rename keeps a whole folder
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _export_tiny(
    modality: Modality | str,
    inpaint: bool,
    precision: str,
    seed: int,
    plain: bool,
    feature_cache: bool,
    final: Path,
) -> Path:
    try:
        from gligen_rt.export.api import export_engines
    except ImportError as e:
        raise BackendUnavailable(
            f"exporting the tiny model needs torch ({e.name} is missing): pip install 'gligen-rt[export]'"
        ) from None
    log.info("exporting the tiny %s model once into %s", _tiny_config(modality, inpaint).key, final)
    # export_engines writes the folder beside `final` and renames it into place when complete.
    config = _tiny_config(modality, inpaint)
    engines = [n for n in specs_for(config, feature_cache=feature_cache) if plain or n != UNET_PLAIN]
    return export_engines(
        "tiny-random",
        final,
        precision,
        modality=config.modality,
        inpaint=inpaint,
        seed=seed,
        progress=False,
        engines=engines,
        feature_cache=feature_cache,
    )
