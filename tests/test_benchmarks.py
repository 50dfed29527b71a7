"""The benchmark harness: a tiny scenario end to end, the report from a jsonl fixture, the pieces."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gligen_rt.benchmarks import report
from gligen_rt.benchmarks.measure import CallTimer, psnr, run_record, stats, summarize_runs
from gligen_rt.benchmarks.scenario import Config, Scenario, plan_configs
from gligen_rt.cli import main as cli_main


def _has_exporter() -> bool:
    try:
        return importlib.util.find_spec("gligen_rt.export.api") is not None
    except ImportError:
        return False


# ---- a tiny scenario end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bench engine folder for the module's runs (the tiny FP32 engines at 128 px, exported once)."""
    return tmp_path_factory.mktemp("bench-engines")


def test_tiny_scenario_end_to_end(tmp_path: Path, engine_dir: Path) -> None:
    """One repeat of 2 steps at 128 px: one valid JSON line, the markdown table and the plot."""
    backends = "ort-cpu,tensorrt" if _has_exporter() else "tensorrt"  # no tensorrt on CI: "unavailable"
    out = tmp_path / "results"
    argv = [
        "bench", "--model", "tiny-random", "--size", "128", "--steps", "2", "--beta", "0.5", "--repeats", "1",
        "--warmup", "1", "--backends", backends, "--precisions", "fp32", "--eager-precisions", "fp32",
        "--matmul-size", "256", "--threads", "1", "--device", "cpu", "--in-process",
        "--out-dir", str(out), "--engine-dir", str(engine_dir),
    ]  # fmt: skip
    assert cli_main(argv) == 0
    lines = (out / "bench.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])  # strict JSON: no NaN / Infinity
    assert record["key"] == "tiny-random-text-box-128px-2steps-cpu"
    assert record["command"].startswith("gligen-rt bench --model tiny")
    assert record["env"]["cpu"] and record["env"]["versions"]["torch"]
    labels = {c["label"]: c for c in record["configs"]}
    assert {"reference fp32", "eager fp32"} <= set(labels)
    assert labels.pop("ours tensorrt fp32")["status"] == "unavailable"
    for c in labels.values():
        assert c["status"] == "ok", c
        st = c["steady"]["stages"]
        assert (
            st["unet_grounded"]["calls_per_run"] + st["unet_plain"]["calls_per_run"] == 3
        )  # PLMS: 2 steps + 1
        assert c["memory"]["peak_rss"] > c["memory"]["weights_bytes"] > 0
    # the eager baseline runs the same weights and sampler: the same image as the reference
    assert labels["eager fp32"]["psnr_db"] >= 60
    flops = record["machine"]["flops"]
    assert flops["unet_grounded"] > flops["unet_plain"] == flops["sd_unet"] > 0
    assert record["machine"]["matmul_gflops"]["fp32"] > 0
    if _has_exporter():
        ours = labels["ours ort-cpu fp32"]
        assert ours["psnr_db"] >= 30
        assert ours["engine_keys"]
    md = (out / f"{record['key']}.md").read_text()
    assert "| reference fp32 |" in md and "## Targets" in md
    png = out / f"{record['key']}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not _has_exporter(), reason="the exporter (torch.onnx) is not importable")
def test_token_downsampling_gets_its_own_engines_flops_and_key(tmp_path: Path, engine_dir: Path) -> None:
    """--token-downsample 2: our engines and the plain SD control exported with it (their own folder
    and file), our GFLOP/s counted on the FLOPs they do compute, the key and the report saying so."""
    out = tmp_path / "results"
    argv = [
        "bench", "--model", "tiny-random", "--size", "128", "--steps", "2", "--beta", "0.5", "--repeats", "1",
        "--warmup", "0", "--backends", "ort-cpu", "--precisions", "fp32", "--no-eager", "--token-downsample", "2",
        "--matmul-size", "256", "--threads", "1", "--device", "cpu", "--in-process",
        "--out-dir", str(out), "--engine-dir", str(engine_dir),
    ]  # fmt: skip
    assert cli_main(argv) == 0
    record = json.loads((out / "bench.jsonl").read_text().splitlines()[0])
    assert record["key"] == "tiny-random-text-box-128px-2steps-cpu-td2"
    folders = [f for f in engine_dir.iterdir() if f.name.endswith("-td2")]
    assert (
        len(folders) == 1 and json.loads((folders[0] / "manifest.json").read_text())["token_downsample"] == 2
    )
    flops = record["machine"]["flops"]
    assert flops["ours_unet_grounded"] < flops["unet_grounded"] and flops["ours_sd_unet"] < flops["sd_unet"]
    assert flops["ours_unet_plain"] == flops["ours_sd_unet"]
    ours = next(c for c in record["configs"] if c["label"] == "ours ort-cpu fp32")
    assert ours["status"] == "ok", ours
    assert 20 < ours["psnr_db"] < 90  # an approximation of the reference, not the reference
    d = report.analyze(record)["derived"]["ours ort-cpu fp32"]
    t = ours["steady"]["stages"]["unet_plain"]["median"]
    assert d["gflops_unet_plain"] == pytest.approx(flops["ours_unet_plain"] / t / 1e9)
    md = (out / f"{record['key']}.md").read_text()
    assert "pool the first level's attention keys and values 2x2" in md


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason="openvino and nncf are not installed",
)
def test_openvino_bf16_and_int8_each_get_their_build(tmp_path: Path, engine_dir: Path) -> None:
    """Both run the one FP32 engine folder; each needs its own IR build. The harness once built
    only the first one's, and int8 then failed for want of its build."""
    out = tmp_path / "results"
    argv = [
        "bench", "--model", "tiny-random", "--size", "128", "--steps", "2", "--beta", "0.5", "--repeats", "1",
        "--warmup", "0", "--backends", "openvino", "--precisions", "bf16,int8", "--no-eager", "--no-reference",
        "--matmul-size", "256", "--threads", "1", "--device", "cpu", "--in-process",
        "--out-dir", str(out), "--engine-dir", str(engine_dir),
    ]  # fmt: skip
    assert cli_main(argv) == 0
    record = json.loads((out / "bench.jsonl").read_text().splitlines()[0])
    labels = {c["label"]: c for c in record["configs"]}
    for label in ("ours openvino bf16", "ours openvino int8"):
        assert labels[label]["status"] == "ok", labels[label]
    # the memory target counts the weights as each build holds them
    assert (
        labels["ours openvino int8"]["memory"]["weights_bytes"]
        < labels["ours openvino bf16"]["memory"]["weights_bytes"]
    )


def test_worker_runs_in_its_own_process(tmp_path: Path) -> None:
    """The isolated path: a worker process measures the machine and writes its JSON result."""
    from gligen_rt.benchmarks.harness import execute

    scenario = Scenario(model="tiny-random", size=64, steps=2, matmul_size=128)
    task = {"task": "machine", "scenario": scenario.to_dict(), "config": Config("reference").to_dict()}
    result = execute(task, tmp_path, isolate=True)
    assert result["flops"]["fusers"] > 0 and result["matmul_gflops"]["fp32"] > 0


@pytest.mark.skipif(not _has_exporter(), reason="the exporter (torch.onnx) is not importable")
def test_our_worker_never_imports_torch(tmp_path: Path, engine_dir: Path) -> None:
    """Our runtime's peak RSS is measured in a process that holds only what the runtime needs: a
    torch import there (e.g. by the scenario's checks) would add ~0.2 GB to the figure."""
    from gligen_rt.benchmarks.harness import _task, engine_folder, execute

    scenario = Scenario(model="tiny-random", size=128, steps=2, matmul_size=128, threads=1)
    config = Config("ours", "ort-cpu", "fp32")
    folder = engine_folder(engine_dir, scenario, config)  # the module's other runs may have made it
    exported = execute(_task("export", scenario, config, tmp_path, folder), tmp_path / "tasks", False)
    assert exported.get("status") != "failed", exported
    result = execute(_task("config", scenario, config, tmp_path, folder), tmp_path / "tasks", True)
    assert result["status"] == "ok", result
    assert result["memory"]["torch_imported"] is False


# ---- the report from a jsonl fixture --------------------------------------------------------------


def _stats(median: float) -> dict[str, float]:
    return {"median": median, "p90": median * 1.1, "min": median * 0.95, "mean": median, "n": 3}


def _config(
    kind: str, backend: str, precision: str, e2e: float, grounded: float, plain: float, **extra: Any
) -> dict:
    label = f"ours {backend} {precision}" if kind == "ours" else f"{kind} {precision}"
    stages = {
        "text_encoder": {**_stats(0.05), "calls_per_run": 1},
        "grounding": {**_stats(0.004), "calls_per_run": 1},
        "unet_grounded": {**_stats(grounded), "calls_per_run": 7},
        "unet_plain": {**_stats(plain), "calls_per_run": 14},
        "vae_decoder": {**_stats(0.6), "calls_per_run": 1},
    }
    return {
        "kind": kind, "backend": backend, "precision": precision, "label": label, "status": "ok",
        "load_s": 5.0, "psnr_db": extra.pop("psnr_db", None),
        "first_run": {"e2e": e2e * 1.3, "overhead": 0.01, "stages": {k: v["median"] * 1.2 for k, v in stages.items()}},
        "steady": {"e2e": _stats(e2e), "engine_sum": _stats(e2e - extra.get("overhead", 0.05)),
                   "overhead": _stats(extra.pop("overhead", 0.05)), "stages": stages},
        "runs": [], "sd_unet_step": extra.pop("sd_unet_step", None),
        "memory": {"base_rss": 2**28, "after_load_rss": 5 * 2**30, "peak_rss": extra.pop("peak", 6 * 2**30),
                   "weights_bytes": 5 * 2**30},
        "engine_keys": ["unet:0123456789ab"] if kind == "ours" else None,
    }  # fmt: skip


def fixture_record() -> dict[str, Any]:
    return {
        "schema": 1,
        "time": "2026-11-25T08:00:00+00:00",
        "seconds": 1234.5,
        "command": "gligen-rt bench --model sd14 --size 256",
        "key": "sd14-text-box-256px-20steps-cpu",
        "scenario": Scenario().to_dict(),
        "env": {
            "cpu": "Example CPU",
            "cpu_flags": ["avx512f"],
            "cores_physical": 2,
            "memory_gb": 24,
            "gpus": [],
            "versions": {"torch": "2.13.0"},
            "git_sha": "abc",
        },  # fmt: skip
        "machine": {
            "matmul_gflops": {"fp32": 90.0, "bf16": 330.0},
            "flops": {"unet_grounded": 486e9, "unet_plain": 360e9, "sd_unet": 360e9, "fusers": 126e9},
        },
        "configs": [
            _config("reference", "torch", "fp32", 90.0, 4.5, 3.4, psnr_db=99.0),
            _config("eager", "torch", "fp32", 88.0, 4.4, 3.3, psnr_db=99.0),
            _config("eager", "torch", "bf16", 40.0, 2.0, 1.3, psnr_db=31.0),
            # speedup 2.0 PASS; plain/SD 1.0 PASS; overhead 0.1/20 = 0.5% PASS; memory 1.2 PASS
            _config(
                "ours",
                "openvino",
                "bf16",
                20.0,
                1.1,
                0.9,
                psnr_db=29.0,
                overhead=0.1,
                sd_unet_step=_stats(0.9),
                peak=int(6 * 2**30),
            ),  # fmt: skip
            # speedup 40/32 = 1.25 MISS; overhead 1 s / 32 s MISS; memory 8/5 MISS; no control: n/a
            _config("ours", "ort-cpu", "fp32", 32.0, 2.0, 1.5, psnr_db=60.0, overhead=1.0, peak=8 * 2**30),
            {
                "kind": "ours",
                "backend": "ort-cpu",
                "precision": "fp16",
                "label": "ours ort-cpu fp16",
                "status": "failed",
                "reason": "EngineError: example",
            },  # fmt: skip
        ],
        "skipped": [{"label": "ours openvino fp16", "reason": "openvino runs fp32/bf16"}],
        "engines": {},
    }


def test_report_renders_from_a_jsonl_fixture(tmp_path: Path) -> None:
    path = tmp_path / "bench.jsonl"
    older = fixture_record()
    older["configs"] = older["configs"][:2]
    path.write_text(json.dumps(older) + "\n\n" + json.dumps(fixture_record()) + "\n")
    assert cli_main(["bench", "--report-only", "--out-dir", str(tmp_path)]) == 0
    md = (tmp_path / "sd14-text-box-256px-20steps-cpu.md").read_text()
    assert "ours openvino bf16" in md  # the latest line of the key was rendered
    assert "Fastest eager PyTorch configuration: eager bf16." in md
    assert "ours ort-cpu fp16: failed: EngineError: example" in md
    assert "ours openvino fp16: skipped" in md
    assert (tmp_path / "sd14-text-box-256px-20steps-cpu.png").stat().st_size > 1000


def test_targets_verdicts_and_margins() -> None:
    a = report.analyze(fixture_record())
    assert a["fastest_eager"] == "eager bf16"
    got = {(t.name, t.config): t for t in a["targets"]}
    ov = got[("end to end vs fastest eager", "ours openvino bf16")]
    assert ov.verdict == "MISS" and ov.value == pytest.approx(2.0) and ov.margin == "-1.00x"
    assert "PSNR 29.0 dB" in ov.note
    quality = got[("PSNR vs FP32 reference", "ours openvino bf16")]
    assert quality.verdict == "MISS" and quality.margin == "-11.00 dB"
    for step in ("grounded", "plain"):
        share = got[(f"UNet {step} step / matmul peak", "ours openvino bf16")]
        assert share.value == pytest.approx(a["derived"]["ours openvino bf16"][f"peak_share_unet_{step}"])
        assert share.verdict == ("PASS" if share.value >= 0.65 else "MISS")
    assert got[("end to end vs fastest eager", "ours ort-cpu fp32")].verdict == "MISS"
    assert got[("plain step / SD UNet step", "ours openvino bf16")].verdict == "PASS"
    assert got[("plain step / SD UNet step", "ours ort-cpu fp32")].verdict == "n/a"
    share = got[("grounded step overhead (time share)", "ours openvino bf16")]
    assert share.value == pytest.approx(0.2 / 1.1) and share.limit == pytest.approx(126 / 486)
    assert share.verdict == "PASS"
    assert got[("runtime overhead / end to end", "ours openvino bf16")].verdict == "PASS"
    assert got[("runtime overhead / end to end", "ours ort-cpu fp32")].verdict == "MISS"
    assert got[("peak RSS / weights in use", "ours openvino bf16")].margin == "+0.10x"
    assert got[("peak RSS / weights in use", "ours ort-cpu fp32")].verdict == "MISS"
    gflops = a["derived"]["ours openvino bf16"]["gflops_unet_grounded"]
    assert gflops == pytest.approx(486 / 1.1)
    assert a["derived"]["ours openvino bf16"]["peak_name"] == "bf16"


def test_report_without_our_runtime_says_so() -> None:
    record = fixture_record()
    record["configs"] = [c for c in record["configs"] if c["kind"] != "ours"]
    md = report.markdown(record)
    assert "no configuration of our runtime ran" in md


# ---- pieces ---------------------------------------------------------------------------------------


def test_plan_configs_filters_and_explains() -> None:
    configs, skipped = plan_configs(
        Scenario(), ["ort-cpu", "openvino"], ["fp32", "bf16", "fp16"], cpu_bf16=False
    )
    labels = [c.label for c in configs]
    assert labels == [
        "reference fp32",
        "ours ort-cpu fp32",
        "ours ort-cpu fp16",
        "ours openvino fp32",
        "eager fp32",
    ]
    reasons = {s["label"]: s["reason"] for s in skipped}
    assert "no BF16" in reasons["ours openvino bf16"] and "no BF16" in reasons["eager bf16"]
    assert "fp32/fp16" in reasons["ours ort-cpu bf16"]
    _, skipped = plan_configs(Scenario(modality="keypoint"), [], ["fp32"])
    assert "text-box only" in skipped[0]["reason"]
    with pytest.raises(ValueError, match="unknown backend"):
        plan_configs(Scenario(), ["nope"], ["fp32"])
    cached = Scenario(feature_cache=3, feature_cache_grounded=2)
    configs, _ = plan_configs(cached, ["openvino"], ["fp32"], eager=False, reference=False)
    assert [c.label for c in configs] == [
        "ours openvino fp32",
        "ours openvino fp32 feature-cache 3",
        "ours openvino fp32 feature-cache 3 grounded 2",
    ]
    assert cached.key.endswith("-fc3-fcg2")
    assert Config.from_dict(configs[2].to_dict()) == configs[2]
    configs, skipped = plan_configs(
        cached, ["openvino"], ["fp32"], eager=False, reference=False, cached_only=True
    )
    assert [c.label for c in configs] == [
        "ours openvino fp32 feature-cache 3",
        "ours openvino fp32 feature-cache 3 grounded 2",
    ]
    assert skipped == [{"label": "ours openvino fp32", "reason": "left out by --cached-only"}]
    configs, _ = plan_configs(cached, ["openvino"], ["fp32"], eager=False, cached_only=True, low_memory=True)
    assert [c.label for c in configs][-2:] == [
        "ours openvino fp32 feature-cache 3 low-memory",
        "ours openvino fp32 feature-cache 3 grounded 2 low-memory",
    ]
    assert configs[0].label == "reference fp32" and not configs[1].low_memory
    assert Config.from_dict(configs[-1].to_dict()) == configs[-1]


def test_stats_timer_and_psnr() -> None:
    s = stats([3.0, 1.0, 2.0, 4.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["n"] == 4 and 3.0 < s["p90"] <= 4.0
    assert stats([]) == {}
    timer = CallTimer()
    f = timer.wrap("unet_plain", lambda x: x + 1)
    assert f(1) == 2 and f(2) == 3
    timer.add("grounding", 0.5)
    rec = run_record(10.0, timer.take(), nested=("grounding",))
    assert rec["engine_sum"] < 0.5 and rec["overhead"] > 9.5
    summary = summarize_runs([rec, rec])
    assert summary["stages"]["unet_plain"]["n"] == 4 and summary["stages"]["unet_plain"]["calls_per_run"] == 2
    a = np.zeros((1, 8, 8, 3), np.uint8)
    assert psnr(a, a) == math.inf
    b = a.copy()
    b[0, 0, 0, 0] = 255
    assert psnr(b, a) == pytest.approx(10 * math.log10(255**2 / (255**2 / a.size)))


def test_peak_is_the_best_library_of_the_precision() -> None:
    """Shares are taken against the best matmul any library reached in the run (torch or OpenVINO);
    INT8-weight configurations compute in BF16; INT8 activations meet the better of INT8 and BF16."""
    from gligen_rt.benchmarks.report import peak_for

    record = {
        "scenario": {"device": "cpu"},
        "machine": {"matmul_gflops": {"fp32": 90.0, "bf16": 214.0, "bf16-openvino": 329.0}},
    }
    assert peak_for(record, {"precision": "bf16"}) == ("bf16", 329.0)
    assert peak_for(record, {"precision": "int8"}) == ("bf16", 329.0)
    assert peak_for(record, {"precision": "fp32"}) == ("fp32", 90.0)
    # INT8 activations: the INT8 peak, unless the run's BF16 matmul reached more (then that one)
    record["machine"]["matmul_gflops"]["int8-openvino"] = 700.0
    assert peak_for(record, {"precision": "int8a"}) == ("int8", 700.0)
    record["machine"]["matmul_gflops"]["bf16"] = 2810.0
    assert peak_for(record, {"precision": "int8a"}) == ("bf16", 2810.0)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_int8_probe_runs_each_variant_against_fp32(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The INT8 probe on the tiny engines (the variants without NNCF: fp32 against itself, bf16):
    FP32 reproduces its own image, BF16 is close but not equal, one JSON line; bad input is one line."""
    from test_runtime_support import engine_folder

    from gligen_rt.benchmarks.int8_probe import main as probe

    folder = engine_folder(tmp_path_factory, "text-box", False, plain=True)
    out = tmp_path / "probe"
    argv = ["--engines", str(folder), "--out-dir", str(out), "--size", "64", "--steps", "3"]
    assert probe([*argv, "--variants", "fp32,bf16", "--calibration-runs", "1", "--threads", "2"]) == 0
    record = json.loads((out / "int8_probe.jsonl").read_text())
    rows = {r["variant"]: r for r in record["variants"]}
    assert record["size"] == [64, 64] and record["cpu"]
    assert rows["fp32"]["psnr_db"] is None and rows["fp32"]["eps_rel_l2"] == 0.0
    assert 20.0 < rows["bf16"]["psnr_db"] < 99.0 and 0.0 < rows["bf16"]["eps_rel_l2"] < 0.1
    assert rows["fp32"]["step_s"] > 0 and rows["bf16"]["int8_kernels"] == 0
    import collections

    import openvino as ov

    from gligen_rt.engines.openvino import attention_products

    model = ov.Core().read_model(str(folder / "unet_plain.onnx"))
    softmaxes = collections.Counter(op.get_type_name() for op in model.get_ordered_ops())["Softmax"]
    assert len(attention_products(model)) == 2 * softmaxes > 0  # Q K^T and P V of every attention
    capsys.readouterr()
    assert probe([*argv, "--variants", "int4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "int4" in err
