"""An exported engine folder as the runtime sees it: manifest, model config, engine specs, tokenizer.

    DIR/manifest.json, DIR/<engine>.onnx + DIR/<engine>.json, DIR/tokenizer/, DIR/<backend>/...

Opening a folder checks, before any backend loads anything, that every engine the model needs is
listed and present, that each engine's manifest describes this model (same model config, a spec
whose fingerprint is the one the runtime derives from the folder's config and envelope) and that
its graph has the recorded size. A graph's sha256 (when asked) is checked by ``read_onnx``, the
first time a backend reads that graph: a backend that runs a built artifact instead (OpenVINO IR,
a TensorRT plan) checks that artifact and never hashes the ONNX it was built from, which for SD-1.4
is 3.4 GB of reading per load. Every failure is one EngineError line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gligen_rt.core.errors import EngineError, first_line
from gligen_rt.core.modality import Modality
from gligen_rt.core.tokenizer import ClipTokenizer
from gligen_rt.engines.manifest import (
    EngineManifest,
    FolderManifest,
    load_folder_manifest,
    load_manifest,
    manifest_path_for,
    verify,
)
from gligen_rt.engines.spec import (
    GROUNDING,
    IMAGE_ENCODER,
    TEXT_ENCODER,
    UNET,
    UNET_PLAIN,
    UNET_SHALLOW,
    VAE_DECODER,
    VAE_ENCODER,
    EngineSpec,
    ShapeEnvelope,
    fingerprint,
    spec_from_dict,
    spec_to_dict,
    specs_for,
)


def model_config_from_dict(d: dict[str, Any]) -> Any:
    """The ModelConfig recorded in a manifest.

    ModelConfig lives in gligen_rt/core/config.py, a torch-free module (it imports only
    gligen_rt.core.modality), so importing it keeps the runtime torch-free.
    """
    from gligen_rt.core.config import from_dict

    try:
        return from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise EngineError(
            f"the engine folder's model config is unreadable ({e}): re-export the engine folder"
        ) from None


def required_engines(config: Any) -> tuple[str, ...]:
    """The engines a model cannot run without (unet_plain is optional: steps with gate 0 then run
    `unet` with gate 0)."""
    names = [TEXT_ENCODER]
    if config.modality is Modality.TEXT_IMAGE_BOX:
        names.append(IMAGE_ENCODER)
    names += [GROUNDING, UNET, VAE_DECODER]
    if config.inpaint:
        names.append(VAE_ENCODER)
    return tuple(names)


def same_io(a: EngineSpec, b: EngineSpec) -> bool:
    """Same engine name and ordered I/O (names, dtypes, symbolic dims); envelopes may differ."""
    da, db = spec_to_dict(a), spec_to_dict(b)
    return all(da[k] == db[k] for k in ("name", "inputs", "outputs"))


@dataclass
class EngineFolder:
    """An opened engine folder (read-only).

    path: the folder. manifest: DIR/manifest.json. config: the gligen_ref ModelConfig it was
    exported from. envelope: the request envelope of its specs. specs: {engine: EngineSpec} the
    runtime expects, for the engines present. onnx_manifests: {engine: EngineManifest} of the graphs.
    """

    path: Path
    manifest: FolderManifest
    config: Any
    envelope: ShapeEnvelope
    specs: dict[str, EngineSpec]
    onnx_manifests: dict[str, EngineManifest] = field(default_factory=dict)
    unhashed: set[str] = field(default_factory=set)  # graphs whose sha256 read_onnx still checks

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, check_sha256: bool = True) -> EngineFolder:
        """Read and check DIR (see the module docstring); EngineError (one line) on any mismatch."""
        path = Path(path)
        if not path.is_dir():
            raise EngineError(f"engine folder {path} does not exist: export one with `gligen-rt export`")
        manifest = load_folder_manifest(path)
        config = model_config_from_dict(manifest.model_config)
        try:
            envelope = (
                ShapeEnvelope.from_dict(manifest.envelope)
                if manifest.envelope
                else ShapeEnvelope.for_config(config)
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EngineError(
                f"{path}/manifest.json has an unreadable envelope ({e}): re-export the engine folder"
            ) from None
        expected = specs_for(config, envelope, feature_cache=UNET_SHALLOW in manifest.engines)
        missing = [n for n in required_engines(config) if n not in manifest.engines]
        if missing:
            raise EngineError(
                f"{path} lacks the engines {', '.join(missing)} that a {config.key} model needs: "
                "re-export the engine folder with `gligen-rt export`"
            )
        unknown = [n for n in manifest.engines if n not in expected]
        if unknown:
            raise EngineError(
                f"{path} lists engines {', '.join(unknown)} that a {config.key} model does not have: "
                "re-export the engine folder"
            )
        folder = cls(path, manifest, config, envelope, {n: expected[n] for n in manifest.engines})
        for name in manifest.engines:
            folder.onnx_manifests[name] = folder._check_onnx(name)
        if check_sha256:
            folder.unhashed = set(manifest.engines)
        return folder

    def _check_onnx(self, name: str) -> EngineManifest:
        onnx = self.onnx_path(name)
        if not onnx.is_file():
            raise EngineError(f"{onnx} is missing: re-export the engine folder with `gligen-rt export`")
        m = load_manifest(manifest_path_for(onnx))
        if m.engine != name:
            raise EngineError(
                f"{manifest_path_for(onnx)} describes engine {m.engine!r}, not {name!r}: re-export"
            )
        if m.model_config != self.manifest.model_config:
            raise EngineError(
                f"{onnx.name} was exported from another model than {self.path}/manifest.json describes "
                f"({m.model_config.get('name')}-{m.model_config.get('modality')}): re-export the engine folder"
            )
        verify(m, spec=self.specs[name], artifact_path=onnx, check_sha256=False)
        return m

    # -- paths and facts ----------------------------------------------------------------------

    def onnx_path(self, name: str) -> Path:
        """Where the graph lies (for messages and manifests; a backend reads it via ``read_onnx``)."""
        return self.path / f"{name}.onnx"

    def read_onnx(self, name: str) -> Path:
        """The graph's path for a backend about to read it, its sha256 checked the first time
        (when the folder was opened with check_sha256)."""
        path = self.onnx_path(name)
        if name in self.unhashed:
            verify(self.onnx_manifests[name], artifact_path=path)
            self.unhashed.discard(name)
        return path

    def built_dir(self, backend: str) -> Path:
        """DIR/<backend>: where `gligen-rt build` puts that backend's artifacts."""
        return self.path / backend

    def built_manifest(self, backend: str, name: str) -> EngineManifest | None:
        """The manifest of `name` built for `backend`, or None when it was not built."""
        p = self.built_dir(backend) / f"{name}.json"
        return load_manifest(p) if p.is_file() else None

    def built_spec(self, backend: str, name: str) -> tuple[EngineSpec, EngineManifest] | None:
        """(spec, manifest) of a built artifact after checking it was built from this folder's graph
        with the same I/O (its envelope may be narrower: static builds); None when not built."""
        m = self.built_manifest(backend, name)
        if m is None:
            return None
        spec = spec_from_dict(m.spec)
        fix = f"rebuild with `gligen-rt build --onnx {self.path} --backend {backend}`"
        if fingerprint(spec) != m.spec_fingerprint or not same_io(spec, self.specs[name]):
            raise EngineError(
                f"{self.built_dir(backend) / (name + '.json')} does not match {name}'s spec: {fix}"
            )
        if m.onnx_sha256 != self.onnx_manifests[name].onnx_sha256:
            raise EngineError(
                f"{backend}/{name} was built from another graph than {self.onnx_path(name).name}: {fix}"
            )
        return spec, m

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def has_plain_unet(self) -> bool:
        return UNET_PLAIN in self.specs

    def tokenizer(self) -> ClipTokenizer:
        """The CLIP tokenizer saved in DIR/<manifest.tokenizer> (the runtime never needs the network)."""
        folder = self.path / (self.manifest.tokenizer or "tokenizer")
        if not folder.is_dir():
            raise EngineError(f"{folder} is missing: re-export the engine folder (it carries the tokenizer)")
        try:
            return ClipTokenizer.from_folder(folder)
        except Exception as e:  # CheckpointError and friends: report as an engine-folder problem
            raise EngineError(f"cannot read the tokenizer in {folder} ({first_line(e)}): re-export") from None
