"""Bad input to gligen-rt-native: one line on stderr, exit 2, no output file (driven by ctest).

    bad_input.py --cli PATH/gligen-rt-native

Cases: missing engine folder, an engine folder whose engine was exported from another model, a
request for another model, box outside [0, 1], malformed JSON, unreadable image, size outside
the envelope, missing request file, unknown backend, unwritable output folder; the request and the
output folder are checked before any engine loads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def folder(modality: str) -> Path:
    from gligen_rt.runtime.tiny import tiny_engines

    return tiny_engines(modality, plain=modality == "text-box")  # the folders parity.py uses


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cli", required=True)
    args = p.parse_args()
    text_box, image_box = folder("text-box"), folder("text-image-box")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        good = {"prompt": "a cat", "objects": [{"phrase": "a cat", "box": [0.1, 0.1, 0.5, 0.5]}], "steps": 1}

        def request(name: str, content: object) -> Path:
            path = work / name
            path.write_text(content if isinstance(content, str) else json.dumps(content))
            return path

        # another model's engine inside a text-box folder: its manifest describes another model
        mixed = work / "mixed"
        shutil.copytree(text_box, mixed)
        kp = json.loads((folder("keypoint") / "unet.json").read_text())
        unet = json.loads((mixed / "unet.json").read_text())
        unet["model_config"] = kp["model_config"]
        (mixed / "unet.json").write_text(json.dumps(unet))
        (work / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really a png")

        # a folder whose UNet graph is garbage: a run that loaded its engines would fail on that, so
        # an error about the request or the output shows it was checked before any engine loads
        broken = work / "broken"
        shutil.copytree(text_box, broken)
        size = (broken / "unet.onnx").stat().st_size  # same size: only its sha256 and OpenVINO can tell
        (broken / "unet.onnx").write_bytes(b"\0" * size)

        out_dir = work / "out"
        out_dir.mkdir()
        cases = [
            ("missing folder", work / "nope", request("r1.json", good), "openvino", out_dir / "a.png"),
            ("engine of another model", mixed, request("r2.json", good), "openvino", out_dir / "b.png"),
            (
                "request for another model",
                text_box,
                request("r3.json", {"prompt": "x", "persons": [{"keypoints": [None] * 17}]}),
                "openvino",
                out_dir / "c.png",
            ),
            (
                "box outside [0, 1]",
                text_box,
                request("r4.json", {**good, "objects": [{"phrase": "a", "box": [0.1, 0.1, 1.2, 0.5]}]}),
                "openvino",
                out_dir / "d.png",
            ),
            (
                "malformed JSON",
                text_box,
                request("r5.json", '{"prompt": "a cat",'),
                "openvino",
                out_dir / "e.png",
            ),
            (
                "unreadable image",
                image_box,
                request(
                    "r6.json",
                    {"prompt": "x", "objects": [{"box": [0.1, 0.1, 0.5, 0.5], "image": "garbage.png"}]},
                ),
                "openvino",
                out_dir / "f.png",
            ),
            (
                "size outside the envelope",
                text_box,
                request("r7.json", {**good, "height": 1024}),
                "openvino",
                out_dir / "g.png",
            ),
            (
                "size not a multiple of 64",
                text_box,
                request("r8.json", {**good, "width": 100}),
                "openvino",
                out_dir / "h.png",
            ),
            ("missing request file", text_box, work / "none.json", "openvino", out_dir / "i.png"),
            ("unknown backend", text_box, request("r9.json", good), "no-such-backend", out_dir / "j.png"),
            (
                "unwritable output folder",
                text_box,
                request("r10.json", good),
                "openvino",
                work / "no" / "dir" / "k.png",
            ),
            (
                "size outside the envelope, checked before loading",
                broken,
                request("r11.json", {**good, "height": 1024}),
                "openvino",
                out_dir / "l.png",
            ),
            (
                "unwritable output folder, checked before loading",
                broken,
                request("r12.json", good),
                "openvino",
                work / "no" / "dir" / "m.png",
            ),
        ]
        # what the one line must name, where the case is about the order of the checks
        expect = {
            "size outside the envelope, checked before loading": "1024",
            "unwritable output folder, checked before loading": "cannot write",
        }
        for name, engines, req, backend, out in cases:
            cmd = [args.cli, "generate", "--engines", str(engines), "--request", str(req), "--out", str(out)]
            proc = subprocess.run([*cmd, "--backend", backend], capture_output=True, text=True)
            lines = proc.stderr.strip().splitlines()
            leftovers = sorted(p.name for p in out_dir.iterdir())
            good_case = (
                proc.returncode == 2
                and len(lines) == 1
                and lines[0].startswith("error: ")
                and not out.exists()
                and not leftovers
                and expect.get(name, "") in proc.stderr
            )
            print(
                json.dumps(
                    {"case": name, "exit": proc.returncode, "stderr": proc.stderr.strip(), "ok": good_case}
                )
            )
            ok &= good_case
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
