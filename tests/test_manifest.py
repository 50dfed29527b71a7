"""Engine manifests: round trip, every mismatch as a one-line EngineError, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from gligen_rt.core.config import tiny_random, to_dict
from gligen_rt.core.errors import EngineError
from gligen_rt.engines import manifest as mf
from gligen_rt.engines.manifest import (
    EngineManifest,
    FolderManifest,
    atomic_output,
    atomic_write_bytes,
    load_folder_manifest,
    load_manifest,
    manifest_path_for,
    onnx_sha256,
    sha256_file,
    verify,
    write_manifest,
)
from gligen_rt.engines.spec import ShapeEnvelope, fingerprint, spec_to_dict, specs_for, static


def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, EngineError)
    assert msg and "\n" not in msg
    return msg


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    """An engine folder with a built 'plan' for the tiny UNet: DIR/tensorrt/unet.plan + json."""
    cfg = tiny_random()
    spec = specs_for(cfg)["unet"]
    write_manifest(
        tmp_path / "manifest.json",
        FolderManifest(
            model_config=to_dict(cfg),
            precision="fp16",
            engines=("unet",),
            envelope=ShapeEnvelope.for_config(cfg).to_dict(),
        ),
    )
    plan = tmp_path / "tensorrt" / "unet.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"engine-bytes" * 1000)
    write_manifest(
        manifest_path_for(plan),
        EngineManifest(
            engine="unet",
            backend="tensorrt",
            artifact=plan.name,
            artifact_sha256=sha256_file(plan),
            artifact_size=plan.stat().st_size,
            spec_fingerprint=fingerprint(spec),
            spec=spec_to_dict(spec),
            onnx_sha256="0" * 64,
            model_config=to_dict(cfg),
            precision="fp16",
            flavor="fp16-strongly-typed",
            checkpoint_sha256="1" * 64,
            builder={"workspace": None, "strongly_typed": True},
            library_versions={"tensorrt": "10.3.0"},
            gpu_compute_capability="8.9",
            parity={"max_abs": 1.5e-3, "psnr": 48.0},
        ),
    )
    return tmp_path


def _plan(engine_dir: Path) -> Path:
    return engine_dir / "tensorrt" / "unet.plan"


def test_round_trip(engine_dir: Path):
    m = load_manifest(engine_dir / "tensorrt" / "unet.json")
    assert m.engine == "unet" and m.format_version == mf.FORMAT_VERSION
    path = engine_dir / "copy.json"
    write_manifest(path, m)
    assert load_manifest(path) == m
    raw = json.loads(path.read_text())
    for key in (
        "format_version",
        "engine",
        "spec_fingerprint",
        "spec",
        "onnx_sha256",
        "checkpoint_sha256",
        "model_config",
        "precision",
        "flavor",
        "builder",
        "library_versions",
        "gpu_compute_capability",
        "parity",
        "created",
    ):
        assert key in raw
    folder = load_folder_manifest(engine_dir)
    assert folder.engines == ("unet",) and folder.precision == "fp16"
    # Unknown keys survive a round trip.
    d = folder.to_dict() | {"future_field": {"x": 1}}
    write_manifest(engine_dir / "manifest.json", d)
    again = load_folder_manifest(engine_dir)
    assert again.extra == {"future_field": {"x": 1}}
    assert again.to_dict() == d


def test_verify_passes(engine_dir: Path):
    m = load_manifest(engine_dir / "tensorrt" / "unet.json")
    verify(
        m,
        spec=specs_for(tiny_random())["unet"],
        library_versions={"tensorrt": "10.3.0", "onnxruntime": "1.32.0"},
        gpu_cc=(8, 9),
        artifact_path=_plan(engine_dir),
    )
    verify(m)  # nothing to compare
    verify(m, gpu_cc=None)


def test_spec_mismatch(engine_dir: Path):
    m = load_manifest(engine_dir / "tensorrt" / "unet.json")
    other = static(specs_for(tiny_random())["unet"], 2, 128, 128)
    with pytest.raises(EngineError) as e:
        verify(m, spec=other, artifact_path=_plan(engine_dir))
    msg = _one_line_error(e)
    assert msg.startswith("unet.plan was built for spec ")
    assert f"gligen-rt build --onnx {engine_dir.resolve()} --backend tensorrt" in msg


def test_library_version_mismatch(engine_dir: Path):
    m = load_manifest(engine_dir / "tensorrt" / "unet.json")
    with pytest.raises(EngineError) as e:
        verify(m, library_versions={"tensorrt": "10.8.0"})
    assert _one_line_error(e) == (
        "unet.plan was built for TensorRT 10.3.0 but 10.8.0 is installed: "
        "rebuild with `gligen-rt build --onnx DIR --backend tensorrt`"
    )


def test_gpu_cc_mismatch(engine_dir: Path):
    m = load_manifest(engine_dir / "tensorrt" / "unet.json")
    with pytest.raises(EngineError) as e:
        verify(m, gpu_cc="8.6", artifact_path=_plan(engine_dir))
    msg = _one_line_error(e)
    assert "compute capability 8.9 but this GPU is 8.6" in msg and "rebuild with" in msg


def test_corrupt_artifact_sha256(engine_dir: Path):
    m = load_manifest(engine_dir / "tensorrt" / "unet.json")
    plan = _plan(engine_dir)
    data = bytearray(plan.read_bytes())
    data[100] ^= 0xFF  # same size, different bytes
    plan.write_bytes(bytes(data))
    verify(m, artifact_path=plan, check_sha256=False)  # size alone cannot see it
    with pytest.raises(EngineError) as e:
        verify(m, artifact_path=plan)
    msg = _one_line_error(e)
    assert msg.startswith("corrupt unet.plan") and "sha256" in msg and "rebuild" in msg


def test_truncated_artifact(engine_dir: Path):
    m = load_manifest(engine_dir / "tensorrt" / "unet.json")
    plan = _plan(engine_dir)
    plan.write_bytes(plan.read_bytes()[:-10])
    with pytest.raises(EngineError) as e:
        verify(m, artifact_path=plan, check_sha256=False)
    assert _one_line_error(e).startswith("corrupt unet.plan")
    plan.unlink()
    with pytest.raises(EngineError) as e:
        verify(m, artifact_path=plan)
    assert "missing" in _one_line_error(e)


def test_truncated_json(engine_dir: Path):
    path = engine_dir / "tensorrt" / "unet.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(EngineError) as e:
        load_manifest(path)
    msg = _one_line_error(e)
    assert msg.startswith("corrupt engine manifest") and "re-export/rebuild" in msg
    (engine_dir / "manifest.json").write_text("{")
    with pytest.raises(EngineError) as e:
        load_folder_manifest(engine_dir)
    assert _one_line_error(e).startswith("corrupt engine folder manifest")


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2]",  # not an object
        '{"engine": "unet"}',  # keys missing
        "\x00\xff\xfe",  # binary
    ],
)
def test_other_corrupt_manifests(tmp_path: Path, content: str):
    path = tmp_path / "unet.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(EngineError) as e:
        load_manifest(path)
    assert _one_line_error(e).startswith("corrupt engine manifest")


def test_missing_and_newer_manifest(engine_dir: Path):
    with pytest.raises(EngineError) as e:
        load_manifest(engine_dir / "nope.json")
    assert "missing" in _one_line_error(e)
    path = engine_dir / "tensorrt" / "unet.json"
    d = json.loads(path.read_text())
    d["format_version"] = mf.FORMAT_VERSION + 1
    path.write_text(json.dumps(d))
    with pytest.raises(EngineError) as e:
        load_manifest(path)
    assert "upgrade gligen-rt" in _one_line_error(e)


def test_onnx_manifest_fix_is_reexport(tmp_path: Path):
    onnx = tmp_path / "unet.onnx"
    onnx.write_bytes(b"graph")
    (tmp_path / "unet.onnx.data").write_bytes(b"weights" * 10)
    spec = specs_for(tiny_random())["unet"]
    m = EngineManifest(
        engine="unet",
        backend="onnx",
        artifact="unet.onnx",
        artifact_sha256=onnx_sha256(onnx),
        artifact_size=5 + 70,
        spec_fingerprint=fingerprint(spec),
        spec=spec_to_dict(spec),
        onnx_sha256=onnx_sha256(onnx),
        model_config=to_dict(tiny_random()),
        precision="fp32",
        flavor="fp32",
    )
    verify(m, spec=spec, artifact_path=onnx)
    (tmp_path / "unet.onnx.data").write_bytes(b"Weights" * 10)
    with pytest.raises(EngineError) as e:
        verify(m, artifact_path=onnx)
    msg = _one_line_error(e)
    assert msg.startswith("corrupt unet.onnx") and "gligen-rt export" in msg


def test_sha256_helpers(tmp_path: Path):
    p = tmp_path / "blob"
    data = os.urandom(300_000)
    p.write_bytes(data)
    assert sha256_file(p, chunk_size=4096) == hashlib.sha256(data).hexdigest()
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"abc")
    assert onnx_sha256(onnx) == hashlib.sha256(b"abc").hexdigest()
    (tmp_path / "m.onnx.data").write_bytes(b"def")
    assert onnx_sha256(onnx) == hashlib.sha256(b"abcdef").hexdigest()
    assert manifest_path_for(tmp_path / "unet.onnx") == tmp_path / "unet.json"
    assert manifest_path_for(tmp_path / "unet.3f2a.onnx") == tmp_path / "unet.json"


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "sub" / "unet.json"
    write_manifest(target, {"old": True})

    def boom(src, dst):
        raise KeyboardInterrupt  # e.g. Ctrl-C between write and rename

    monkeypatch.setattr(mf.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_manifest(target, {"new": True})
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "sub" / "unet.plan", b"x" * 100)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in target.parent.iterdir()) == ["unet.json"]

    with pytest.raises(RuntimeError), atomic_output(tmp_path / "x.plan") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("builder crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    # Not JSON-serializable: fails before anything is written.
    with pytest.raises(ValueError):
        write_manifest(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
