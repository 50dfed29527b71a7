"""Every tiny engine, as exported, parses and builds in TensorRT-RTX's builder (which needs no GPU).

TensorRT-RTX is strongly typed like TensorRT 11, so this proves the FP16 graphs carry their types
and the FP32 graphs build as they are. Running the plans needs an NVIDIA GPU; without one those
tests skip with that reason.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from gligen_rt.engines import manifest as M
from gligen_rt.engines import spec as S
from gligen_rt.engines.tensorrt import gpu_compute_capability
from gligen_rt.export.api import export_engines
from gligen_rt.export.inputs import make_inputs
from gligen_rt.export.parity import ort_session, rel_error

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_rtx") is None, reason="tensorrt_rtx is not installed"
)
ENVELOPE = S.ShapeEnvelope(batch=(1, 1, 2), height=(128, 128, 192), width=(128, 128, 192))


def _has_gpu() -> bool:
    return gpu_compute_capability() is not None  # CuPy sees a CUDA device


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An FP16 (strongly typed) folder with every engine kind (the feature cache's unet_shallow
    included); its grounding engine is an FP32 graph, so both precisions go through the builder (a
    UNet build takes ~20 s of CPU here, so one folder)."""
    tmp = tmp_path_factory.mktemp("rtx")
    folder = export_engines(
        "tiny-random",
        tmp / "fp16",
        "fp16",
        envelope=ENVELOPE,
        modality="text-image-box",
        inpaint=True,
        progress=False,
        feature_cache=True,
    )
    return {"fp16": folder}


def _build(folder: Path) -> list[Path]:
    from gligen_rt.engines.build import build

    return build(folder, "tensorrt-rtx", progress=False)


@pytest.fixture(scope="module")
def plans(folders: dict[str, Path]) -> dict[str, list[Path]]:
    try:
        import gligen_rt.engines.build  # noqa: F401
    except ImportError:
        pytest.skip("engines/build.py is not available")
    return {key: _build(d) for key, d in folders.items()}


def test_every_tiny_engine_builds(folders: dict[str, Path], plans: dict[str, list[Path]]):
    built = {p.name.split(".")[0] for p in plans["fp16"]}
    assert built == set(S.ENGINE_NAMES)
    for key, paths in plans.items():
        for plan in paths:
            assert plan.stat().st_size > 0
            m = M.load_manifest(M.manifest_path_for(plan))
            source = M.load_manifest(folders[key] / f"{m.engine}.json")
            assert m.onnx_sha256 == source.onnx_sha256 and m.flavor == source.flavor
            assert m.parity == source.parity  # the export's parity numbers travel with the plan
    grounding = M.load_manifest(folders["fp16"] / "grounding.json")
    assert (grounding.precision, grounding.flavor) == ("fp32", "fp32")


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs an NVIDIA GPU (CuPy sees none)")
def test_tiny_plans_match_onnx_runtime(folders: dict[str, Path], plans: dict[str, list[Path]]):
    from gligen_rt.core.config import from_dict
    from gligen_rt.runtime.backend_tensorrt import run_plan

    for key, paths in plans.items():
        folder = M.load_folder_manifest(folders[key])
        config = from_dict(folder.model_config)
        env = S.ShapeEnvelope.from_dict(folder.envelope)
        specs = S.specs_for(config, env, feature_cache=S.UNET_SHALLOW in folder.engines)
        for plan in paths:
            spec = specs[plan.name.split(".")[0]]
            tol = 2e-2 if M.load_manifest(folders[key] / f"{spec.name}.json").precision == "fp16" else 1e-3
            inputs = make_inputs(spec, config, 2, 128, 192, seed=5, gate=0.5)
            want = ort_session(folders[key] / f"{spec.name}.onnx").run(None, inputs)
            got = run_plan(plan, spec, inputs, backend="tensorrt-rtx")
            for name, w in zip(spec.output_names, want):
                assert rel_error(got[name], w)[0] < tol, (key, spec.name, name)
