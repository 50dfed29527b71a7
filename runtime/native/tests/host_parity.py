"""Host-side numerics of the native runtime against the Python modules they port (driven by ctest).

    host_parity.py --unit PATH/gligen_unit_test

Bit-for-bit: sampler timesteps, init sigma, add_noise and a whole sampling loop (PLMS, DDIM,
DPM-Solver++(2M), Euler) on a fixed eps function; scheduled-sampling gates; image preprocessing
(CLIP bicubic, condition maps incl. sem one-hot, Lanczos inpainting image, inpainting mask) on
odd-sized images; engine-spec fingerprints of every tiny and sd14 model. Request validation:
the same accept / reject decision as gligen_rt.core.request on a set of good and bad requests.
Linux: drop_mapped_pages (the OpenVINO backend's, engines/openvino.py's port) empties a shared
read-only mapping of a file, leaves a private one alone, and the bytes read back are the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from gligen_rt.core import grounding as G
from gligen_rt.core.config import preset, to_dict
from gligen_rt.core.errors import RequestError
from gligen_rt.core.modality import Modality
from gligen_rt.core.request import request_from_json, validate
from gligen_rt.core.schedule import make_plan, request_gates
from gligen_rt.core.schedulers import make_scheduler
from gligen_rt.engines.spec import ShapeEnvelope, fingerprint, specs_for


def py_sched(sampler: str, steps: int, x: np.ndarray, noise: np.ndarray) -> dict:
    s = make_scheduler(sampler, steps)
    out = {"timesteps": [float(t) for t in s.timesteps], "init_noise_sigma": s.init_noise_sigma}
    out["add_noise"] = s.add_noise(x, noise, 0)
    x = x * s.init_noise_sigma
    for i in range(len(s.timesteps)):
        x = s.step(x, i, lambda xi, t: xi * (t / 1000.0 * 0.5) + 0.1)
    out["x"] = x
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--unit", required=True)
    args = p.parse_args()
    rng = np.random.default_rng(1)
    cmds: list[dict] = []
    expect: list = []
    checks: list[str] = []

    shape = (2, 4, 3, 5)
    for sampler in ("plms", "ddim", "dpmpp_2m", "euler"):
        for steps in (1, 2, 3, 7, 50):
            x = rng.standard_normal(shape, dtype=np.float32)
            noise = rng.standard_normal(shape, dtype=np.float32)
            cmds.append(
                {
                    "cmd": "sched",
                    "sampler": sampler,
                    "steps": steps,
                    "shape": shape,
                    "x": x.ravel().tolist(),
                    "noise": noise.ravel().tolist(),
                }
            )
            expect.append(py_sched(sampler, steps, x, noise))
            checks.append(f"sched {sampler} {steps}")

    gate_cases = [
        {"beta": 0.3, "modality": "text-box", "inpaint": False, "steps": 50},
        {"beta": 0.29, "modality": "text-box", "inpaint": False, "steps": 100},
        {"alpha_type": [0.3, 0.2, 0.5], "modality": "text-box", "inpaint": False, "steps": 50},
        {"alpha_type": [0.1, 0.2, 0.7], "modality": "keypoint", "inpaint": False, "steps": 10},
        {"modality": "hed", "inpaint": False, "steps": 25},
        {"modality": "text-box", "inpaint": True, "steps": 7},
    ]
    for g in gate_cases:
        cmds.append({"cmd": "gates", **g})
        expect.append(
            list(
                request_gates(
                    g.get("beta"), g.get("alpha_type"), Modality(g["modality"]), g["inpaint"], g["steps"]
                )
            )
        )
        checks.append(f"gates {g}")

    # the per-step plan: engines of each step, both feature caches, phases that come back
    for gates, plain, fc, fcg in [
        ([1.0] * 3 + [0.0] * 7, True, 3, 0),
        ([1.0] * 5 + [0.0] * 5, True, 2, 2),
        ([1.0, 0.5, 0.2, 0.0, 0.0, 0.0], False, 2, 3),
        ([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0], True, 2, 2),
    ]:
        timesteps = [float(990 - 50 * i) for i in range(len(gates))]
        cmds.append(
            {"cmd": "plan", "timesteps": timesteps, "gates": gates, "plain": plain, "fc": fc, "fcg": fcg}
        )
        expect.append([s.engine for s in make_plan(timesteps, gates, plain, fc, fcg)])
        checks.append(f"plan gates {gates} plain {plain} feature_cache {fc} grounded {fcg}")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = {
            "rgb_wide.png": rng.integers(0, 256, (37, 61, 3), dtype=np.uint8),
            "rgb_tall.png": rng.integers(0, 256, (90, 41, 3), dtype=np.uint8),
            "gray.png": rng.integers(0, 256, (33, 47), dtype=np.uint8),
            "rgba.png": rng.integers(0, 256, (40, 40, 4), dtype=np.uint8),
            "labels.png": rng.integers(0, 152, (51, 77), dtype=np.uint8),
        }
        for i in range(6):  # random shapes: both resampling pass orders, up- and downscaling
            h, w = (int(v) for v in rng.integers(20, 260, 2))
            images[f"random{i}.png"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for name, arr in images.items():
            Image.fromarray(arr).save(work / name)
        Image.fromarray(images["rgb_wide.png"]).convert("P", palette=Image.Palette.ADAPTIVE).save(
            work / "palette.png"
        )
        for name in [n for n in images if n != "labels.png"] + ["palette.png"]:
            path = str(work / name)
            for size in (32, 224):
                cmds.append({"cmd": "image", "op": "clip", "path": path, "size": size})
                expect.append(G.clip_image_input(path, size))
                checks.append(f"clip {name} {size}")
            for h, w in ((64, 128), (128, 64), (192, 192)):
                cmds.append(
                    {
                        "cmd": "image",
                        "op": "condition",
                        "path": path,
                        "modality": "hed",
                        "height": h,
                        "width": w,
                    }
                )
                expect.append(G.condition_input(path, "hed", h, w)["condition"])
                checks.append(f"condition {name} {h}x{w}")
                cmds.append({"cmd": "image", "op": "load", "path": path, "height": h, "width": w})
                expect.append(G.load_image(path, h, w))
                checks.append(f"load {name} {h}x{w}")
        for h, w in ((64, 128), (192, 64)):
            path = str(work / "labels.png")
            cmds.append(
                {"cmd": "image", "op": "condition", "path": path, "modality": "sem", "height": h, "width": w}
            )
            expect.append(G.condition_input(path, "sem", h, w)["condition"])
            checks.append(f"sem {h}x{w}")
        boxes = [[0.1, 0.2, 0.55, 0.9], [0.0, 0.0, 1.0, 0.01], [0.33, 0.33, 0.66, 0.67]]
        for h, w in ((16, 24), (8, 8), (64, 64)):
            cmds.append({"cmd": "image", "op": "mask", "boxes": boxes, "h": h, "w": w})
            expect.append(G.inpaint_mask(boxes, h, w))
            checks.append(f"mask {h}x{w}")

        for name in ("tiny-random", "sd14"):
            for modality in Modality:
                for inpaint in (False, True):
                    if inpaint and not modality.is_box:
                        continue
                    cfg = preset(name, modality, inpaint)
                    env = ShapeEnvelope.for_config(cfg, batch=(1, 2, 3))
                    for fc in (False, True):
                        cmds.append(
                            {
                                "cmd": "specs",
                                "model_config": to_dict(cfg),
                                "envelope": env.to_dict(),
                                "feature_cache": fc,
                            }
                        )
                        expect.append(
                            {k: fingerprint(v) for k, v in specs_for(cfg, env, feature_cache=fc).items()}
                        )
                        checks.append(f"specs {cfg.key}{' feature-cache' if fc else ''}")

        box = {"phrase": "a cat", "box": [0.1, 0.1, 0.5, 0.5]}
        requests = [
            ({"prompt": "x", "objects": [box]}, "text-box", False),
            ({"prompt": "x", "objects": [{**box, "box": [0.1, 0.1, 1.5, 0.5]}]}, "text-box", False),
            ({"prompt": "x", "objects": [{**box, "box": [0.5, 0.1, 0.1, 0.5]}]}, "text-box", False),
            ({"prompt": "x", "objects": [{"box": [0.1, 0.1, 0.5, 0.5]}]}, "text-box", False),
            ({"prompt": "x", "objects": [box] * 31}, "text-box", False),
            ({"prompt": "x", "persons": [{"keypoints": [[0.5, 0.5]] * 17}]}, "keypoint", False),
            ({"prompt": "x", "persons": [{"keypoints": [[0.5, 0.5]] * 16}]}, "keypoint", False),
            ({"prompt": "x", "persons": [{"keypoints": [[0.5, 1.5]] * 17}]}, "keypoint", False),
            ({"prompt": "x", "persons": [{"keypoints": [None] * 17}]}, "text-box", False),
            ({"prompt": "x", "beta": 0.3, "alpha_type": [1, 0, 0]}, "text-box", False),
            ({"prompt": "x", "alpha_type": [0.5, 0.2, 0.2]}, "text-box", False),
            ({"prompt": "x", "beta": 1.5}, "text-box", False),
            ({"prompt": "x", "sampler": "heun"}, "text-box", False),
            ({"prompt": "x", "steps": 0}, "text-box", False),
            ({"prompt": "x", "steps": 1001}, "text-box", False),
            ({"prompt": "x", "feature_cache": 3}, "text-box", False),
            ({"prompt": "x", "feature_cache": -1}, "text-box", False),
            ({"prompt": "x", "feature_cache": 1.5}, "text-box", False),
            ({"prompt": "x", "feature_cache_grounded": 2}, "text-box", False),
            ({"prompt": "x", "feature_cache_grounded": -2}, "text-box", False),
            ({"prompt": "x", "guidance": -1}, "text-box", False),
            ({"prompt": "x", "height": 100}, "text-box", False),
            ({"prompt": "x", "height": 256, "width": 192}, "text-box", False),
            ({"prompt": "x", "height": 192, "width": 128}, "text-box", False),
            ({"prompt": "x", "num_images": 0}, "text-box", False),
            ({"prompt": "x"}, "hed", False),
            ({"prompt": "x", "objects": [box]}, "text-box", True),
            ({"prompt": "x"}, "text-box", True),
            ({"prompt": "x", "seed": 1.5}, "text-box", False),
            ({"prompt": 3}, "text-box", False),
            ({"prompt": "x", "colour": 3}, "text-box", False),
            ({"prompt": "x", "objects": [{**box, "label": 1}]}, "text-box", False),
        ]
        for d, modality, inpaint in requests:
            cmds.append(
                {"cmd": "request", "json": d, "modality": modality, "inpaint": inpaint, "max_size": 192}
            )
            try:
                validate(request_from_json(d), modality, inpaint, max_size=192, multiple=64)
                expect.append(True)
            except RequestError:
                expect.append(False)
            checks.append(f"request {d} on {modality}{' inpaint' if inpaint else ''}")

        if sys.platform.startswith("linux"):  # dropping mapped weight pages (OpenVINO backend)
            mapped = os.path.realpath(os.path.join(tmp, "weights.bin"))
            with open(mapped, "wb") as f:
                f.write(np.random.default_rng(5).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())
            cmds.append({"cmd": "pages", "path": mapped})
            expect.append(None)
            checks.append("drop_mapped_pages on a 1 MiB file mapped shared and private")

        proc = subprocess.run([args.unit], input=json.dumps(cmds), capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr)
        return 1
    got = json.loads(proc.stdout)
    failed = 0
    for name, g, e, c in zip(checks, got, expect, cmds):
        if c["cmd"] == "sched":
            same = (
                np.array_equal(np.float64(g["timesteps"]), np.float64(e["timesteps"]))
                and g["init_noise_sigma"] == e["init_noise_sigma"]
                and np.array_equal(np.float32(g["add_noise"]), e["add_noise"].ravel())
                and np.array_equal(np.float32(g["x"]), e["x"].ravel())
            )
        elif c["cmd"] == "image":
            same = tuple(g["shape"]) == e.shape and np.array_equal(np.float32(g["data"]), e.ravel())
        elif c["cmd"] == "request":
            same = g["ok"] == e
        elif c["cmd"] == "pages":  # both mappings resident, then the shared one's pages gone, same bytes
            n = g["size"]
            same = (
                g["rss_before"] >= 2 * n * 0.9
                and g["rss_after"] <= n
                and g["advised"] >= n
                and g["same_bytes"]
                and g["private_kept"]
            )
        else:
            same = g == e
        if not same:
            failed += 1
            print(f"MISMATCH {name}: native {str(g)[:300]}")
    print(json.dumps({"checks": len(checks), "mismatches": failed}))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
