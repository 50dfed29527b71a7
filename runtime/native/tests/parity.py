"""Native runtime == Python runtime on the same engine folder, backend and seed (driven by ctest).

    parity.py --export-only                       export (or find in the cache) every tiny folder used
    parity.py --case text-box --cli gligen-rt-native   PSNR of native vs Python images, FP32 and BF16
    parity.py --c-api gligen_c_api_test           run the C API test on the text-box folder
    parity.py --built --cli gligen-rt-native      the shipped tiny model's folder with every OpenVINO
                                                  build (IR: FP32, BF16, INT8 weights, INT8 activations)

Engine folders are the tiny-random ones of runtime/tiny.py (cache: $GLIGEN_RT_CACHE or
~/.cache/gligen-rt), exported by the Python exporter. Each comparison prints one JSON line.
Bars: PSNR >= 60 dB on openvino (FP32) and ort-cpu, >= 45 dB on openvino-bf16 and the INT8 builds.
$GLIGEN_NATIVE_PARITY_BACKENDS narrows the backends (the sanitizer build runs openvino only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BARS = {
    "openvino": 60.0,
    "openvino-bf16": 45.0,
    "ort-cpu": 60.0,
    "openvino-int8": 45.0,
    "openvino-int8a": 45.0,
}
# `gligen-rt build` kinds both runtimes load from the IR (engines/openvino.py BUILDS)
OPENVINO_BUILDS = ("openvino", "openvino-bf16", "openvino-int8", "openvino-int8a")
CASES = (
    "text-box",
    "text-image-box",
    "keypoint",
    "hed",
    "canny",
    "depth",
    "normal",
    "sem",
    "inpaint-text-box",
    "inpaint-text-image-box",
    "tiny",  # the shipped trained tiny model (text-box): a single-UNet folder, FP16 token embedding
    "feature-cache",  # text-box exported with --feature-cache, two UNets; requests reuse deep features
    "inpaint-feature-cache",  # the same on inpainting, one UNet (the deep features come from `unet`)
)
FEATURE_CACHE_CASES = ("feature-cache", "inpaint-feature-cache")


def modality_of(case: str) -> str:
    if case in ("samplers", "tiny", *FEATURE_CACHE_CASES):
        return "text-box"
    return case.removeprefix("inpaint-")


# Cases whose folder also holds unet_plain (gate-0 steps on the plain UNet); the others are
# single-UNet folders (gate-0 steps on `unet` with gate 0). Both loop paths are covered, and each
# folder is one the Python suite exports too (one cache, exported once in CI).
TWO_UNET_CASES = ("text-box", "hed", "inpaint-text-box", "samplers")


def folder_of(case: str) -> Path:
    from gligen_rt.runtime.tiny import tiny_engines, trained_tiny_dir

    if case == "tiny":
        return trained_tiny_dir() / "engines"
    inpaint = case.startswith("inpaint-")
    modality = modality_of(case)
    if case in FEATURE_CACHE_CASES:  # the folders tests/test_feature_cache.py exports too
        return tiny_engines(modality, inpaint, plain=not inpaint, feature_cache=True)
    return tiny_engines(modality, inpaint, plain=case in TWO_UNET_CASES)


def _png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return path.name


def make_request(case: str, work: Path, rng: np.random.Generator) -> dict:
    """A request exercising every input of `case`, with input images of odd sizes (crop + resize)."""
    modality = modality_of(case)
    req: dict = {"prompt": "a photo of a cat and a dog", "negative_prompt": "blurry", "seed": 7, "steps": 4}
    req.update(height=128, width=192)
    if modality in ("text-box", "text-image-box"):
        req["objects"] = [
            {"phrase": "a cat", "box": [0.1, 0.2, 0.5, 0.9]},
            {"phrase": "a dog", "box": [0.55, 0.1, 0.95, 0.6]},
        ]
        if modality == "text-image-box":
            img = rng.integers(0, 256, (45, 37, 3), dtype=np.uint8)
            req["objects"][1]["image"] = _png(work / "ref.png", img)
            req["objects"].append({"box": [0.3, 0.3, 0.7, 0.7], "image": "ref2.png"})
            _png(work / "ref2.png", rng.integers(0, 256, (30, 60, 3), dtype=np.uint8))
            if not case.startswith("inpaint-"):
                req["style_image"] = _png(
                    work / "style.png", rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
                )
    elif modality == "keypoint":
        kps = [[float(x), float(y)] for x, y in rng.uniform(0.05, 0.95, (17, 2))]
        kps[3] = None
        req["persons"] = [{"keypoints": kps}, {"keypoints": [[0.5, 0.5]] * 17}]
    elif modality == "sem":
        labels = rng.integers(0, 152, (70, 100), dtype=np.uint8)
        req["condition"] = _png(work / "labels.png", labels)
    else:
        req["condition"] = _png(work / "cond.png", rng.integers(0, 256, (70, 100, 3), dtype=np.uint8))
    if case in FEATURE_CACHE_CASES:  # 3 grounded steps, then 3 plain: each whole, shallow, whole
        req.update(steps=6, alpha_type=[0.5, 0.0, 0.5], feature_cache=2, feature_cache_grounded=2)
    if case.startswith("inpaint-"):
        req["inpaint_image"] = _png(work / "room.png", rng.integers(0, 256, (110, 150, 3), dtype=np.uint8))
    return req


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0**2 / mse)


def compare(cli: str, folder: Path, backend: str, req: dict, work: Path, label: str) -> bool:
    from gligen_rt.core.request import request_from_json
    from gligen_rt.runtime.pipeline import GligenPipeline

    req_path = work / f"request-{label}.json"
    req_path.write_text(json.dumps(req))
    with GligenPipeline.from_engines(folder, backend) as pipe:
        ours = pipe(request_from_json(req_path)).images
    out = work / f"native-{label}.png"
    proc = run_native(cli, folder, backend, req_path, out)
    if proc.returncode != 0:
        print(f"FAIL {label} {backend}: native exit {proc.returncode}: {proc.stderr.strip()}")
        return False
    n = ours.shape[0]
    paths = [out] if n == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]
    native = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    value = psnr(native, ours)
    ok = native.shape == ours.shape and value >= BARS[backend] and float(ours.std()) > 0.0
    print(
        json.dumps(
            {
                "case": label,
                "backend": backend,
                "psnr_db": None if math.isinf(value) else round(value, 2),
                "identical": bool(np.array_equal(native, ours)),
                "bar_db": BARS[backend],
                "ok": ok,
            }
        )
    )
    return ok


def run_native(
    cli: str, folder: Path, backend: str, req_path: Path, out: Path
) -> subprocess.CompletedProcess:
    cmd = [cli, "generate", "--engines", str(folder), "--request", str(req_path), "--out", str(out)]
    return subprocess.run([*cmd, "--backend", backend], capture_output=True, text=True)


def compare_builds(cli: str, work: Path, rng: np.random.Generator) -> bool:
    """Every OpenVINO build of a copy of the shipped tiny folder: the native CLI loads each build's
    IR as the Python runtime does (same image within the bar), an INT8 backend without its build is
    one line and a non-zero exit, and a build whose weights changed size is refused."""
    import shutil

    from gligen_rt.cli import main as gligen_rt

    folder = work / "tiny-built"
    shutil.copytree(folder_of("tiny"), folder)
    req = make_request("tiny", work, rng)
    req_path = work / "request-built.json"
    req_path.write_text(json.dumps(req))
    proc = run_native(cli, folder, "openvino-int8", req_path, work / "never.png")
    ok = proc.returncode != 0 and "gligen-rt build" in proc.stderr and proc.stderr.strip().count("\n") == 0
    print(json.dumps({"case": "built", "backend": "openvino-int8", "unbuilt_refused": ok}))
    for backend in OPENVINO_BUILDS:
        argv = ["build", "--onnx", str(folder), "--backend", backend]
        if backend == "openvino-int8a":
            argv += ["--calibration-samples", "4"]
        if gligen_rt(argv) != 0:
            print(f"FAIL built {backend}: gligen-rt build failed")
            return False
        ok &= compare(cli, folder, backend, req, work, f"built-{backend}")
    weights = folder / "openvino-bf16" / "unet.bin"
    with weights.open("ab") as f:
        f.write(b"\0")
    proc = run_native(cli, folder, "openvino-bf16", req_path, work / "never.png")
    refused = proc.returncode != 0 and "unet.bin" in proc.stderr and "rebuild" in proc.stderr
    print(json.dumps({"case": "built", "backend": "openvino-bf16", "changed_weights_refused": refused}))
    return ok and refused and not (work / "never.png").exists()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export-only", action="store_true")
    p.add_argument("--case", choices=(*CASES, "samplers"))
    p.add_argument("--cli")
    p.add_argument("--c-api")
    p.add_argument("--built", action="store_true", help="every OpenVINO build of the shipped tiny folder")
    p.add_argument(
        "--engines", type=Path, help="compare on this engine folder instead of the case's tiny one"
    )
    p.add_argument(
        "--backends", help="comma-separated (default: openvino, openvino-bf16, and ort-cpu when built)"
    )
    args = p.parse_args()
    if args.export_only:
        for case in CASES:
            print(case, folder_of(case))
        return 0
    if args.c_api:
        return subprocess.run([args.c_api, str(args.engines or folder_of("text-box"))]).returncode
    if args.built:
        with tempfile.TemporaryDirectory() as tmp:
            return 0 if compare_builds(args.cli, Path(tmp), np.random.default_rng(0)) else 1
    backends = args.backends or os.environ.get("GLIGEN_NATIVE_PARITY_BACKENDS")
    if not backends:
        built = subprocess.run([args.cli, "backends"], capture_output=True, text=True, check=True).stdout
        backends = ",".join(
            b for b in ("openvino", "openvino-bf16", "ort-cpu") if b in built.strip().split(",")
        )
    ok = True
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = args.engines or folder_of(args.case)
        for backend in backends.split(","):
            if args.case == "samplers":
                base = make_request("text-box", work, rng)
                variants = [{"sampler": s, "beta": 0.5} for s in ("plms", "ddim", "dpmpp_2m", "euler")] + [
                    {"sampler": "ddim", "guidance": 1.0, "num_images": 2, "alpha_type": [0.25, 0.5, 0.25]},
                    {"sampler": "dpmpp_2m", "steps": 1},
                ]
                for v in variants:
                    label = "-".join(f"{k}{v[k]}" for k in v).replace(" ", "")
                    ok &= compare(args.cli, folder, backend, {**base, **v}, work, label)
            else:
                ok &= compare(args.cli, folder, backend, make_request(args.case, work, rng), work, args.case)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
