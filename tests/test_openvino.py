"""OpenVINO builds on the tiny text-box engines: IR written once with its manifest, the runtime runs the
IR (not the ONNX) with a compiled-model cache, request-size engines compiled static per shape, every
attention fused by the CPU plugin, BF16 / INT8-weight builds, and one-line errors."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_runtime_support import engine_folder, psnr, request_for, write_images

from gligen_rt.core.errors import EngineError
from gligen_rt.runtime import GligenPipeline
from gligen_rt.runtime.folder import EngineFolder

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not installed"
)
HAS_NNCF = importlib.util.find_spec("nncf") is not None


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny text-box folder (builds write into it), built for openvino."""
    from gligen_rt.engines.build import build

    src = engine_folder(tmp_path_factory, "text-box", False, plain=True)
    dst = tmp_path_factory.mktemp("ov") / "engines"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("ort-*", "openvino*", "tensorrt*"))
    build(dst, "openvino", progress=False)
    return dst


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def ort_image(folder: Path, images: dict[str, str]) -> np.ndarray:
    with GligenPipeline.from_engines(folder, "ort-cpu", threads=2) as p:
        return p(request_for("text-box", False, images)).images


def test_build_writes_ir_with_manifest_and_cache(folder: Path) -> None:
    from gligen_rt.engines.manifest import load_manifest, verify

    out = folder / "openvino"
    for name in ("text_encoder", "grounding", "unet", "unet_plain", "vae_decoder"):
        m = load_manifest(out / f"{name}.json")
        assert m.backend == "openvino" and m.artifact == f"{name}.xml"
        assert m.builder["weights"] == "fp32" and m.builder["precision_hint"] == "f32"
        assert (out / f"{name}.bin").stat().st_size == m.builder["weights_size"]
        verify(m, artifact_path=out / m.artifact)
    assert any((out / "cache").iterdir())
    # FP32 IR weights are the ONNX graph's weights: same size up to the graph itself
    onnx_bytes = (folder / "unet.onnx").stat().st_size
    assert 0.9 * onnx_bytes < (out / "unet.bin").stat().st_size <= onnx_bytes


def test_runtime_runs_the_ir_per_shape(folder: Path, images: dict[str, str], ort_image: np.ndarray) -> None:
    """The runtime compiles the IR (not the ONNX), the request-size engines at the request's shape,
    and recompiles them for another batch; the images equal ORT CPU's."""
    with GligenPipeline.from_engines(folder, "openvino", threads=2) as p:
        engines = p.backend._engines
        assert all(e.path.suffix == ".xml" for e in engines.values())
        assert engines["unet"].per_shape and not engines["text_encoder"].per_shape
        assert engines["unet"].pool is None  # compiled at its first call
        got = p(request_for("text-box", False, images)).images
        assert psnr(got, ort_image) >= 45.0
        assert dict(engines["unet"].shapes)["sample"][0] == 2
        two = p(request_for("text-box", False, images, num_images=2)).images
        assert dict(engines["unet"].shapes)["sample"][0] == 4
        assert psnr(two[:1], ort_image) >= 45.0


def test_running_the_ir_does_not_hash_the_onnx(folder: Path, tmp_path: Path) -> None:
    """A backend that runs the IR checks the IR, not the graph it was built from (for SD-1.4 the ONNX
    is 3.4 GB of reading per load); ORT, which reads the graph, still finds it corrupt."""
    from gligen_rt.runtime.backend import make_backend
    from gligen_rt.runtime.folder import EngineFolder

    other = tmp_path / "engines"
    shutil.copytree(folder, other, ignore=shutil.ignore_patterns("cache"))
    onnx = other / "unet.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only a hash sees it
    onnx.write_bytes(bytes(data))
    opened = EngineFolder.open(other)
    backend = make_backend("openvino", threads=2)
    try:
        backend.load(opened, ["unet"])
        assert backend._engines["unet"].path.suffix == ".xml"
    finally:
        backend.close()
    assert "unet" in opened.unhashed  # nothing read the graph
    with pytest.raises(EngineError, match="corrupt unet.onnx") as e:
        opened.read_onnx("unet")
    assert "\n" not in str(e.value)
    with pytest.raises(EngineError, match="corrupt unet.onnx"):
        GligenPipeline.from_engines(other, "ort-cpu")


def test_unbuilt_folder_caches_compiled_blobs_only_when_asked(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    images: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$GLIGEN_RT_OPENVINO_CACHE: an exported folder's graphs compiled once, later loads read the
    blobs, the image unchanged; unset, nothing is written. The blobs are keyed on the graphs'
    content: another model's graphs under the same file names compile afresh."""
    from gligen_rt.engines.openvino import ONNX_CACHE_ENV

    def image_and_cached(folder: Path) -> tuple[np.ndarray, dict[str, bool]]:
        with GligenPipeline.from_engines(folder, "openvino", threads=2) as p:
            got = p(request_for("text-box", False, images)).images
            engines = p.backend._engines
            return got, {
                n: bool(e.pool.compiled.get_property("LOADED_FROM_CACHE")) for n, e in engines.items()
            }

    ignore = shutil.ignore_patterns("ort-*", "openvino*", "tensorrt*")
    folder = tmp_path / "engines"
    shutil.copytree(engine_folder(tmp_path_factory, "text-box", False, plain=True), folder, ignore=ignore)
    blobs = tmp_path / "blobs"
    monkeypatch.delenv(ONNX_CACHE_ENV, raising=False)
    plain, cached = image_and_cached(folder)
    assert not any(cached.values()) and not blobs.exists()

    monkeypatch.setenv(ONNX_CACHE_ENV, str(blobs))
    first, cached = image_and_cached(folder)
    assert not any(cached.values()) and len(list(blobs.rglob("*.blob"))) >= len(cached)
    again, cached = image_and_cached(folder)
    assert all(cached.values()), cached
    assert np.array_equal(first, plain) and np.array_equal(again, plain)

    shutil.rmtree(folder)  # other graphs in the same place, same file names (UNets that also output `deep`)
    other = engine_folder(tmp_path_factory, "text-box", False, plain=True, feature_cache=True)
    shutil.copytree(other, folder, ignore=ignore)
    _, cached = image_and_cached(folder)
    assert not cached["unet"] and not cached["unet_plain"]


def test_blob_cache_keeps_fp32_and_bf16_apart(
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    images: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One $GLIGEN_RT_OPENVINO_CACHE for both precisions: OpenVINO keys a blob on the graph only, so
    in one shared folder ``openvino-bf16`` after ``openvino`` imported the FP32 blobs (NaN on a CPU
    with AMX-BF16 and AVX512-FP16). Each hint has its own subfolder: the BF16 image is the one an
    uncached BF16 load gives, the FP32 one the uncached FP32 image."""
    from gligen_rt.engines.openvino import ONNX_CACHE_ENV

    folder = engine_folder(tmp_path_factory, "text-box", False, plain=True)
    request = request_for("text-box", False, images)

    def image(backend: str) -> np.ndarray:
        with GligenPipeline.from_engines(folder, backend, threads=2) as p:
            return p(request).images

    monkeypatch.delenv(ONNX_CACHE_ENV, raising=False)
    uncached = {b: image(b) for b in ("openvino", "openvino-bf16")}
    monkeypatch.setenv(ONNX_CACHE_ENV, str(tmp_path / "blobs"))
    for _ in range(2):  # the first pass writes the blobs, the second reads them
        for backend in ("openvino", "openvino-bf16"):
            assert np.array_equal(image(backend), uncached[backend]), backend
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == ["bf16", "f32"]


def test_every_attention_is_fused(folder: Path) -> None:
    """OpenVINO's CPU plugin runs each attention (SD self- and cross-attention and the fused gated
    self-attention) as one fused kernel, at f32 and bf16, dynamic and static."""
    from gligen_rt.engines.openvino import attention_fusions, compile_model

    xml = folder / "openvino" / "unet.xml"
    shapes = {
        "sample": (2, 4, 8, 8),
        "timestep": (1,),
        "context": (2, 77, 32),
        "tokens": (2, 30, 32),
        "gate": (1,),
    }
    for hint, shp in (("f32", None), ("bf16", shapes)):
        total, fused = attention_fusions(xml, compile_model(xml, "CPU", hint, shapes=shp))
        assert total == 3 * 16 and fused == total, (hint, total, fused)  # 16 blocks x (self, cross, gated)


def test_bf16_build(folder: Path, images: dict[str, str], ort_image: np.ndarray) -> None:
    from gligen_rt.engines.build import build

    build(folder, "openvino", precision="bf16", progress=False, engines=None)
    out = folder / "openvino-bf16"
    # FP16 storage: half the FP32 IR's weights
    assert (out / "unet.bin").stat().st_size < 0.6 * (folder / "openvino" / "unet.bin").stat().st_size
    # the benchmark's memory target counts the weights as the backend holds them: ~half of FP32
    from gligen_rt.benchmarks.ours import _built_weight_share

    engines = ["text_encoder", "grounding", "unet", "vae_decoder"]
    assert 0.45 < _built_weight_share(folder, "openvino-bf16", engines) < 0.55
    assert 0.9 < _built_weight_share(folder, "openvino", engines) <= 1.0
    assert _built_weight_share(folder, "ort-cpu", engines) == 1.0
    with GligenPipeline.from_engines(folder, "openvino-bf16", threads=2) as p:
        assert p.backend._engines["unet"].path == out / "unet.xml"
        got = p(request_for("text-box", False, images)).images
    assert 30.0 <= psnr(got, ort_image) < float("inf")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_NNCF, reason="nncf is not installed")
def test_int8_weight_build(folder: Path, images: dict[str, str], ort_image: np.ndarray) -> None:
    """NNCF INT8 weights: about a quarter of the FP32 bytes, image close to FP32's (at 128 px: OpenVINO
    rejects NNCF's tiny UNet at an 8x8 latent)."""
    from gligen_rt.engines.build import build

    with pytest.raises(EngineError, match="build") as e:
        GligenPipeline.from_engines(folder, "openvino-int8")
    assert "\n" not in str(e.value)
    build(folder, "openvino-int8", progress=False)
    out = folder / "openvino-int8"
    assert (out / "unet.bin").stat().st_size < 0.35 * (folder / "openvino" / "unet.bin").stat().st_size
    req = request_for("text-box", False, images, height=128, width=128)
    with GligenPipeline.from_engines(folder, "openvino", threads=2) as p:
        want = p(req).images
    with GligenPipeline.from_engines(folder, "openvino-int8", threads=2) as p:
        got = p(req).images
    assert 25.0 <= psnr(got, want) < float("inf")


def _calibration_request(tmp_path: Path, **changes: object) -> Path:
    """A text-box request file for calibration: 6 PLMS steps at 128 px (2 grounded, 4 plain)."""
    import json

    body = {
        "prompt": "a red circle and a blue square",
        "objects": [
            {"phrase": "a red circle", "box": [0.1, 0.1, 0.5, 0.5]},
            {"phrase": "a blue square", "box": [0.5, 0.4, 0.9, 0.9]},
        ],
        "seed": 11,
        "steps": 6,
        "beta": 0.3,
        "height": 128,
        "width": 128,
        **changes,
    }
    path = tmp_path / f"calibration-{len(list(tmp_path.glob('calibration-*')))}.json"
    path.write_text(json.dumps(body))
    return path


def test_calibration_records_each_unets_own_inputs(folder: Path, tmp_path: Path) -> None:
    """The UNets' inputs along the runtime's trajectory: every call recorded, then spread evenly."""
    import types

    from gligen_rt.core.errors import RequestError
    from gligen_rt.core.modality import Modality
    from gligen_rt.runtime.calibrate import collect, default_requests, read_requests

    requests = read_requests([_calibration_request(tmp_path)])
    got = collect(folder, requests, samples=3, threads=2)
    assert set(got) == {"unet", "unet_plain"}  # the folder has no unet_shallow
    assert len(got["unet"]) == 2 and len(got["unet_plain"]) == 3  # 2 grounded steps; 3 of 4 plain
    for feed in got["unet"]:
        assert set(feed) == {"sample", "timestep", "context", "tokens", "gate"}
        assert feed["sample"].shape == (2, 4, 16, 16) and float(feed["gate"][0]) == 1.0
    steps = [float(f["timestep"][0]) for f in got["unet_plain"]]
    assert steps == sorted(steps, reverse=True) and len(set(steps)) == 3  # first, middle, last
    from gligen_rt.runtime.calibrate import _spread

    both = [{"gate": np.array([1.0 if i < 6 else 0.0], np.float32), "i": np.array([i])} for i in range(20)]
    kept = [int(c["i"][0]) for c in _spread(both, 8)]  # a gate-skip UNet: half grounded, half plain
    assert kept == [0, 2, 3, 5, 6, 10, 15, 19]
    defaults = default_requests(EngineFolder.open(folder), (192, 256))
    assert len(defaults) == 4 and {(r.height, r.width, r.feature_cache) for r in defaults} == {(192, 256, 0)}
    keypoint = types.SimpleNamespace(config=types.SimpleNamespace(modality=Modality.KEYPOINT, inpaint=False))
    with pytest.raises(RequestError) as e:  # other modalities need their own inputs
        default_requests(keypoint)
    assert "\n" not in str(e.value) and "--calibration" in str(e.value)
    with pytest.raises(RequestError) as e:  # two sizes cannot calibrate one static shape
        collect(
            folder,
            read_requests([_calibration_request(tmp_path), _calibration_request(tmp_path, height=192)]),
        )
    assert "\n" not in str(e.value) and "one size" in str(e.value)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_NNCF, reason="nncf is not installed")
def test_int8_activation_build(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """openvino-int8a: the UNets quantized W8A8 on calibration inputs recorded by `gligen-rt build`,
    the other engines INT8 weights; INT8 kernels in the UNet's runtime graph, the image close to FP32's."""
    import json

    from gligen_rt.cli import main
    from gligen_rt.engines.build import build
    from gligen_rt.engines.openvino import compile_model, int8_kernels

    with pytest.raises(EngineError) as e:  # the Python API needs the inputs handed in
        build(folder, "openvino-int8a", progress=False)
    assert "\n" not in str(e.value) and "calibration" in str(e.value)
    request = _calibration_request(tmp_path)
    capsys.readouterr()
    argv = ["build", "--onnx", str(folder), "--backend", "openvino-int8a", "--calibration", str(request)]
    assert main([*argv, "--calibration-samples", "2"]) == 0
    out = folder / "openvino-int8a"
    printed = capsys.readouterr().out.split()
    assert printed == [
        str(out / f"{n}.xml") for n in json.loads((folder / "manifest.json").read_text())["engines"]
    ]
    unet = json.loads((out / "unet.json").read_text())["builder"]
    assert unet["weights"] == "int8-a" and unet["precision_hint"] == "bf16"
    assert unet["calibration"]["samples"] == 2 and unet["calibration"]["shapes"]["sample"] == [2, 4, 16, 16]
    assert json.loads((out / "unet_plain.json").read_text())["builder"]["calibration"]["samples"] == 2
    assert json.loads((out / "text_encoder.json").read_text())["builder"]["weights"] == "int8-w"
    assert int8_kernels(compile_model(out / "unet_plain.xml", "CPU", "bf16")) > 0
    assert int8_kernels(compile_model(folder / "openvino" / "unet_plain.xml", "CPU", "bf16")) == 0
    req = read_request_at(request, seed=5)
    with GligenPipeline.from_engines(folder, "openvino", threads=2) as p:
        want = p(req).images
    with GligenPipeline.from_engines(folder, "openvino-int8a", threads=2) as p:
        got = p(req).images
    assert 30.0 <= psnr(got, want) < float("inf")
    # misuse: one line, exit 2, nothing built
    for bad in (
        ["build", "--onnx", str(folder), "--backend", "openvino-bf16", "--calibration", str(request)],
        [*argv[:-1], str(tmp_path / "missing.json"), "--out", str(tmp_path / "never")],
        [*argv, "--calibration-samples", "0", "--out", str(tmp_path / "never")],
    ):
        assert main(bad) == 2
        err = capsys.readouterr().err.strip()
        assert err and "\n" not in err
    assert not (tmp_path / "never").exists()


def read_request_at(path: Path, **changes: object):
    import dataclasses

    from gligen_rt.runtime.calibrate import read_requests

    return dataclasses.replace(read_requests([path])[0], **changes)


def test_build_errors_are_one_line(folder: Path, tmp_path: Path) -> None:
    from gligen_rt.engines.build import build

    for backend, precision in (("openvino-bf16", "int8-w"), ("openvino", "fp16")):
        with pytest.raises(EngineError) as e:
            build(folder, backend, precision=precision, progress=False)
        assert "\n" not in str(e.value) and "--backend" in str(e.value)
    broken = tmp_path / "engines"
    shutil.copytree(folder, broken, ignore=shutil.ignore_patterns("openvino-*"))
    (broken / "openvino" / "unet.bin").write_bytes(b"\0" * 10)
    with pytest.raises(EngineError) as e:
        GligenPipeline.from_engines(broken, "openvino")
    assert "\n" not in str(e.value) and "unet.bin" in str(e.value)


def _mapped_rss(path: Path) -> tuple[int, int]:
    """(mappings of `path` in this process, their resident kB), from /proc/self/smaps."""
    import re

    target, mappings, rss, current = str(path.resolve()), 0, 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header (anonymous: no path)
                head = line.split(None, 5)
                current = len(head) == 6 and head[5].rstrip("\n") == target
                mappings += current
            elif current and line.startswith("Rss:"):
                rss += int(line.split()[1])
    return mappings, rss


linux_only = pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc")


@linux_only
def test_drop_mapped_pages_unmaps_read_only_file_pages(tmp_path: Path) -> None:
    """Read-only shared mappings lose their resident pages and read back the same bytes; a private
    writable mapping (copy-on-write pages) is left alone."""
    import mmap

    from gligen_rt.engines.openvino import drop_mapped_pages

    data = np.random.default_rng(0).integers(0, 255, 4 << 20, dtype=np.uint8)
    weights = tmp_path / "w.bin"
    weights.write_bytes(data.tobytes())
    with open(weights, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert np.frombuffer(m, np.uint8).sum() == data.sum()  # every page touched
        assert _mapped_rss(weights)[1] >= 4096
        assert drop_mapped_pages([], [tmp_path]) >= data.nbytes
        assert _mapped_rss(weights) == (1, 0)
        assert np.array_equal(np.frombuffer(m, np.uint8), data)  # faulted back in, unchanged
    with open(weights, "r+b") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as m:
        m[0] = (int(data[0]) + 1) % 256
        assert drop_mapped_pages([weights]) == 0
        assert m[0] == (int(data[0]) + 1) % 256 and _mapped_rss(weights)[1] > 0


@linux_only
def test_mapped_pages_are_dropped_while_the_body_runs(tmp_path: Path) -> None:
    """The dropping thread works during the body (a compile), not only after it."""
    import mmap
    import time

    from gligen_rt.engines.openvino import mapped_pages_dropped

    weights = tmp_path / "w.bin"
    weights.write_bytes(b"\1" * (1 << 20))
    with open(weights, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        with mapped_pages_dropped([weights], interval=0.001):
            assert sum(m[i] for i in range(0, len(m), 4096)) == 256
            deadline = time.monotonic() + 30.0  # a bound on waiting, not a timing assertion
            while _mapped_rss(weights)[1] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _mapped_rss(weights) == (1, 0)


@linux_only
def test_compiled_model_keeps_no_weight_pages_resident(folder: Path) -> None:
    """OpenVINO keeps the imported cache blob mapped for the compiled model's life, and the CPU plugin
    has copied the weights out of it: compile_model leaves none of its pages resident."""
    from gligen_rt.engines.openvino import compile_model

    out = folder / "openvino"
    blobs = sorted((out / "cache").glob("*.blob"))
    compiled = compile_model(out / "text_encoder.xml", "CPU", "f32", out / "cache")
    mapped = [_mapped_rss(b) for b in blobs]
    assert any(n for n, _ in mapped), "the compiled model maps no cache blob: nothing to check"
    assert all(kb == 0 for _, kb in mapped), mapped
    assert _mapped_rss(out / "text_encoder.bin")[1] == 0
    ids = np.zeros((1, 77), np.int32)
    assert np.isfinite(compiled({"input_ids": ids})[compiled.outputs[0]]).all()


@linux_only
def test_first_inference_leaves_no_weight_pages_resident(folder: Path) -> None:
    """The CPU plugin reads some weights only at an engine's first inference (a text encoder's token
    table, weights it converts then): the backend drops those mapped pages after that inference,
    and the engine's output stays the same when they fault back in."""
    from gligen_rt.runtime.backend_openvino import OpenVinoBackend
    from gligen_rt.runtime.folder import EngineFolder

    out = folder / "openvino"
    files = [out / "text_encoder.bin", *sorted((out / "cache").glob("*.blob"))]
    ids = {"input_ids": np.arange(77, dtype=np.int32)[None] % 50}
    with OpenVinoBackend("openvino") as backend:
        backend.load(EngineFolder.open(folder), ["text_encoder"])
        first = backend.run("text_encoder", ids)["last_hidden_state"]
        resident = {f.name: _mapped_rss(f)[1] for f in files}
        assert all(kb == 0 for kb in resident.values()), resident
        assert any(_mapped_rss(f)[0] for f in files), "no weight file is mapped: nothing to check"
        np.testing.assert_array_equal(backend.run("text_encoder", ids)["last_hidden_state"], first)


@pytest.fixture(scope="module")
def static_build(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder's OpenVINO build at one size (128 px, one image): what the memory breakdown and
    the profile measure."""
    from gligen_rt.engines.build import build

    static = tmp_path_factory.mktemp("static") / "engines"
    shutil.copytree(folder, static, ignore=shutil.ignore_patterns("ort-*", "openvino*", "tensorrt*"))
    build(static, "openvino", static=(1, 128, 128), progress=False)
    return static / "openvino"


def test_memory_breakdown_per_engine(
    folder: Path, static_build: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/openvino_memory: one line per engine of a static build (compile, first and second
    inference, release_memory), the total at least the IR weights it holds; a dynamic build is a
    one-line error."""
    from gligen_rt.benchmarks.openvino_memory import main

    assert main([str(static_build), "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:-1]}
    assert set(rows) == {"text_encoder", "grounding", "unet", "unet_plain", "vae_decoder"}
    ir = sum(float(r[0]) for r in rows.values())
    total = float(lines[-1].split(": ")[1].split()[0])
    assert total >= ir > 0
    with pytest.raises(SystemExit, match="built for dynamic sizes: rebuild it with"):
        main([str(folder / "openvino"), "--engines", "unet"])
    assert main([str(tmp_path / "nope")]) == 2


def _profile_parts(lines: list[str]) -> dict[str, tuple[float, float]]:
    """{part: (ms, fusers ms)} from openvino_profile's table."""
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["part"]) + 1
    rows = {}
    for line in lines[start : start + 5]:
        name, ms, _share, fusers = line.split()
        rows[name] = (float(ms), float(fusers))
    return rows


def test_profile_splits_a_step_into_parts_and_the_fusers_share(
    static_build: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/openvino_profile: the grounded UNet's step spends time in the fusers (their
    attention and linear layers) and the plain UNet's none; every part adds up to the nodes' sum;
    attention is found in both; a missing engine and a gate outside [0, 1] are one-line errors."""
    from gligen_rt.benchmarks.openvino_profile import main

    parts = {}
    for engine in ("unet", "unet_plain"):
        assert main([str(static_build), "--engine", engine, "--runs", "1", "--threads", "1"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"OpenVINO build openvino, engine {engine}, gate 1 (no Ifs)")
        parts[engine] = _profile_parts(lines)
        total = parts[engine].pop("all")
        assert sum(ms for ms, _ in parts[engine].values()) == pytest.approx(total[0], abs=0.3)
        assert parts[engine]["attention"][0] > 0 and parts[engine]["matmul"][0] > 0
    assert parts["unet"]["attention"][1] > 0 and parts["unet"]["matmul"][1] > 0
    assert all(fusers == 0 for _, fusers in parts["unet_plain"].values())
    with pytest.raises(SystemExit, match="has no build of unet_shallow: choose from"):
        main([str(static_build), "--engine", "unet_shallow"])
    assert main([str(static_build), "--gate", "2"]) == 2
    assert main([str(static_build), "--property", "SNIPPETS_MODE"]) == 2
    with pytest.raises(SystemExit, match="^error: OpenVINO refused to compile unet_plain with") as e:
        main([str(static_build), "--engine", "unet_plain", "--property", "NO_SUCH_PROPERTY=1"])
    assert "\n" not in str(e.value)
