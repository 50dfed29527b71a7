"""Render a benchmark record (one line of bench.jsonl) as a markdown table, a PNG plot and targets.

Everything here is computed from the record alone, so any past line renders again
(``gligen-rt bench --report-only``). Record fields (harness.run_benchmark):

    key, time, seconds, command, scenario{...}, env{cpu, cpu_flags, gpus, versions, git_sha, ...},
    machine{matmul_gflops{fp32, bf16, fp16, <p>-openvino incl. int8-openvino}, flops{unet_grounded, unet_plain, sd_unet, fusers, and ours_<each> with token downsampling}},
    configs[{label, kind, backend, precision, status, reason?, load_s, psnr_db,
             first_run{e2e, overhead, stages{stage: s}},
             steady{e2e, engine_sum, overhead: stats, stages{stage: stats + calls_per_run}},
             runs[...], sd_unet_step: stats | null, memory{peak_rss, weights_bytes, ...}, engine_keys}],
    skipped[{label, reason}], engines{folder: {keys, ...}}

stats = {median, p90, min, mean, n} in seconds; UNet stages are per call, the others per run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gligen_rt.benchmarks.measure import PER_CALL_STAGES, STAGES

PLOT_STAGES = ("text_encoder", "grounding", "unet_grounded", "unet_plain", "vae_decoder")

# Targets (the numbers): checked on our runtime's configurations.
SPEEDUP_MIN = 3.0  # end to end vs the fastest eager PyTorch configuration
PSNR_MIN = 40.0  # dB against the FP32 reference image, for the speed to count
PEAK_SHARE_MIN = 0.65  # a UNet step's GFLOP/s over the matmul peak of its precision, same run
PLAIN_VS_SD_MAX = 1.03  # plain-phase step vs a plain SD UNet step, same backend and precision
OVERHEAD_MAX = 0.01  # runtime overhead as a fraction of end to end
MEMORY_MAX = 1.3  # peak resident memory / weights in use


@dataclass
class Target:
    name: str
    config: str
    value: float | None  # measured
    limit: float
    better: str  # "higher" or "lower"
    unit: str = "x"
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None or math.isnan(self.value):
            return "n/a"  # (an infinite PSNR, identical images, is a value)
        ok = self.value >= self.limit if self.better == "higher" else self.value <= self.limit
        return "PASS" if ok else "MISS"

    @property
    def margin(self) -> str:
        """How far inside (+) or outside (-) the limit, in the target's unit."""
        if self.verdict == "n/a":
            return ""
        assert self.value is not None
        d = self.value - self.limit if self.better == "higher" else self.limit - self.value
        return _num(d, self.unit, signed=True)


def _num(v: float, unit: str, signed: bool = False) -> str:
    sign = "+" if signed and v >= 0 else ""
    if unit == "%":
        return f"{sign}{v * 100:.1f}%"
    return f"{sign}{v:.2f}{unit}"


def _pct(share: float) -> str:
    return f"{share * 100:.0f}%" if share >= 0.1 else f"{share * 100:.2g}%"


def _ok(c: dict[str, Any]) -> bool:
    return c.get("status") == "ok"


def _median(c: dict[str, Any], *path: str) -> float | None:
    node: Any = c
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node.get("median") if isinstance(node, dict) else None


def peak_for(record: dict[str, Any], c: dict[str, Any]) -> tuple[str, float | None]:
    """The matmul peak a configuration's arithmetic runs against: (precision, GFLOP/s), the best
    any library reached in the run (torch, and ``<precision>-openvino`` on the CPU)."""
    peaks = (record.get("machine") or {}).get("matmul_gflops") or {}
    p = c.get("precision", "fp32")
    if p == "int8a":  # INT8 activations: INT8 products, BF16 between them. Held to the better of
        # the two peaks: where the run's INT8 matmul fell below its BF16 one (an AMX Xeon, where
        # torch's BF16 reached more than OpenVINO's INT8), the BF16 peak is the machine's best.
        best = {
            n: max((v for k, v in peaks.items() if k in (n, f"{n}-openvino")), default=0.0)
            for n in ("int8", "bf16")
        }
        name = max(best, key=lambda n: best[n])
        return name, best[name] or None
    if p.startswith("bf16") or p == "int8":  # INT8 weights are decompressed into BF16 arithmetic
        name = "bf16"
    elif p == "fp16" and record["scenario"].get("device") == "cuda":
        name = "fp16"
    else:
        name = "fp32"  # a CPU without FP16 arithmetic computes FP16 graphs in FP32
    found = [v for k, v in peaks.items() if k == name or k == f"{name}-openvino"]
    return name, max(found) if found else None


def flops_of(record: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The FLOP counts one configuration computes: our engines' own (``ours_*``, with the scenario's
    token downsampling) for ours, the whole model's for the others."""
    flops = (record.get("machine") or {}).get("flops") or {}
    if config.get("kind") != "ours":
        return flops
    return {**flops, **{k[len("ours_") :]: v for k, v in flops.items() if k.startswith("ours_")}}


def analyze(record: dict[str, Any]) -> dict[str, Any]:
    """Derived numbers: fastest eager, per-config speedup, GFLOP/s, overhead share, targets."""
    configs = [c for c in record.get("configs", []) if _ok(c)]
    eager = [c for c in configs if c["kind"] == "eager" and _median(c, "steady", "e2e")]
    fastest_eager = min(eager, key=lambda c: _median(c, "steady", "e2e")) if eager else None
    best_eager_s = _median(fastest_eager, "steady", "e2e") if fastest_eager else None
    derived: dict[str, dict[str, Any]] = {}
    for c in configs:
        d: dict[str, Any] = {}
        e2e = _median(c, "steady", "e2e")
        if e2e and best_eager_s:
            d["speedup"] = best_eager_s / e2e
        overhead = _median(c, "steady", "overhead")
        if e2e and overhead is not None:
            d["overhead_share"] = overhead / e2e
        peak_name, peak = peak_for(record, c)
        d["peak_name"] = peak_name
        flops = flops_of(record, c)
        for stage in ("unet_grounded", "unet_plain"):
            t = _median(c, "steady", "stages", stage)
            if t and flops.get(stage):
                d[f"gflops_{stage}"] = flops[stage] / t / 1e9
                if peak:
                    d[f"peak_share_{stage}"] = d[f"gflops_{stage}"] / peak
        mem = c.get("memory") or {}
        if mem.get("weights_bytes"):
            d["memory_ratio"] = mem["peak_rss"] / mem["weights_bytes"]
        derived[c["label"]] = d
    return {
        "fastest_eager": fastest_eager["label"] if fastest_eager else None,
        "derived": derived,
        "targets": targets(record, derived),
    }


def targets(record: dict[str, Any], derived: dict[str, dict[str, Any]]) -> list[Target]:
    out: list[Target] = []
    ours = [c for c in record.get("configs", []) if c.get("kind") == "ours" and _ok(c)]
    if not ours:
        return [
            Target("our runtime measured", "-", None, 0, "higher", note="no configuration of our runtime ran")
        ]
    for c in ours:
        flops = flops_of(record, c)
        fuser_share = flops["fusers"] / flops["unet_grounded"] if flops.get("unet_grounded") else None
        label, d = c["label"], derived.get(c["label"], {})
        psnr = c.get("psnr_db")
        note = f"PSNR {psnr:.1f} dB vs FP32 reference" if psnr is not None else "no reference image"
        out.append(
            Target("end to end vs fastest eager", label, d.get("speedup"), SPEEDUP_MIN, "higher", note=note)
        )
        out.append(Target("PSNR vs FP32 reference", label, psnr, PSNR_MIN, "higher", " dB"))
        for stage, name in (("unet_grounded", "grounded"), ("unet_plain", "plain")):
            share = d.get(f"peak_share_{stage}")
            out.append(
                Target(
                    f"UNet {name} step / matmul peak",
                    label,
                    share,
                    PEAK_SHARE_MIN,
                    "higher",
                    "%",
                    note=f"peak: {d['peak_name']}" if share is not None else "no peak or FLOPs measured",
                )
            )
        plain, sd = _median(c, "steady", "stages", "unet_plain"), _median(c, "sd_unet_step")
        ratio = plain / sd if plain and sd else None
        out.append(
            Target(
                "plain step / SD UNet step",
                label,
                ratio,
                PLAIN_VS_SD_MAX,
                "lower",
                note="" if ratio else "no plain SD UNet measured on this backend",
            )
        )
        grounded = _median(c, "steady", "stages", "unet_grounded")
        share = (grounded - plain) / grounded if grounded and plain else None
        if fuser_share is not None:
            out.append(
                Target(
                    "grounded step overhead (time share)",
                    label,
                    share,
                    fuser_share,
                    "lower",
                    "%",
                    note=f"limit = fusers' FLOP share {fuser_share * 100:.1f}%",
                )
            )
        out.append(
            Target(
                "runtime overhead / end to end", label, d.get("overhead_share"), OVERHEAD_MAX, "lower", "%"
            )
        )
        out.append(Target("peak RSS / weights in use", label, d.get("memory_ratio"), MEMORY_MAX, "lower"))
    return out


# ---- formatting --------------------------------------------------------------------------------


def _s(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 1.0:
        return f"{v * 1000:.0f} ms" if v >= 0.01 else f"{v * 1000:.1f} ms"
    return f"{v:.2f} s"


def _gb(v: int | None) -> str:
    return "-" if v is None else f"{v / 2**30:.2f} GB"


def _stat(st: dict[str, Any] | None) -> str:
    if not st or "median" not in st:
        return "-"
    return f"{_s(st['median'])} ({_s(st['p90'])}, {_s(st['min'])})"


def markdown(record: dict[str, Any]) -> str:
    """The report: scenario, environment, command, tables, targets."""
    a = analyze(record)
    sc, env = record["scenario"], record.get("env", {})
    mach = record.get("machine") or {}
    lines = [f"# Benchmark {record['key']}", ""]
    lines.append(
        f"Model {sc['model']} ({sc['modality']}, random weights, seed {sc['model_seed']}), {sc['size']}x{sc['size']} px, "
        f"{sc['steps']} {sc['sampler']} steps, beta {sc['beta']}, guidance {sc['guidance']}, batch 1 (CFG 2); "
        f"{sc['warmup']} warm-up + {sc['repeats']} timed runs per configuration, each in its own process."
        + (
            f" Our engines and the plain SD control pool the first level's attention keys and values "
            f"{sc['token_downsample']}x{sc['token_downsample']} (export --token-downsample); eager PyTorch "
            "and the reference do not."
            if sc.get("token_downsample", 1) > 1
            else ""
        )
    )
    lines.append("")
    gpus = ", ".join(g.get("name", "?") for g in env.get("gpus") or []) or "none"
    vers = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
    lines += [
        f"- Machine: {env.get('cpu', '?')}, {env.get('cores_physical', '?')} cores, {env.get('memory_gb', '?')} GB; "
        f"CPU flags: {' '.join(env.get('cpu_flags') or []) or '-'}; GPU: {gpus}",
        f"- Versions: {vers}",
        f"- git {env.get('git_sha') or '?'}; run at {record.get('time', '?')} UTC, {record.get('seconds', '?')} s",
    ]
    peaks = mach.get("matmul_gflops") or {}
    if peaks:
        lines.append(
            f"- Matmul peak (torch.matmul; `-openvino`: OpenVINO MatMul; best of n = {sc.get('matmul_size')} / 2 / 4): "
            + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
        )
    flops = mach.get("flops") or {}
    if flops:
        lines.append(
            f"- FLOPs per UNet call (CFG batch 2): grounded {flops['unet_grounded'] / 1e9:.1f} G, plain "
            f"{flops['unet_plain'] / 1e9:.1f} G, plain SD {flops['sd_unet'] / 1e9:.1f} G; fusers "
            f"{flops['fusers'] / flops['unet_grounded'] * 100:.1f}% of a grounded step"
            + (
                f"; our engines with token downsampling: grounded {flops['ours_unet_grounded'] / 1e9:.1f} G, "
                f"plain {flops['ours_unet_plain'] / 1e9:.1f} G, control {flops['ours_sd_unet'] / 1e9:.1f} G "
                "(their GFLOP/s below count these)"
                if "ours_unet_grounded" in flops
                else ""
            )
        )
    if record.get("command"):
        lines.append(f"- Command: `{record['command']}`")
    lines.append("")

    ok = [c for c in record.get("configs", []) if _ok(c)]
    lines += [
        "## End to end (seconds: median (p90, min) of the timed runs)",
        "",
        "| configuration | end to end | first run | load | vs fastest eager | PSNR vs FP32 ref | runtime overhead | peak RSS | weights in use | peak / weights |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in ok:
        d = a["derived"].get(c["label"], {})
        mem = c.get("memory") or {}
        speed = f"{d['speedup']:.2f}x" if "speedup" in d else "-"
        ps = c.get("psnr_db")
        psnr_s = "-" if ps is None else ("identical" if ps >= 99 else f"{ps:.1f} dB")
        ov = d.get("overhead_share")
        ov_s = "-" if ov is None else f"{_s(_median(c, 'steady', 'overhead'))} ({ov * 100:.2f}%)"
        ratio = f"{d['memory_ratio']:.2f}x" if "memory_ratio" in d else "-"
        weights = _gb(mem.get("weights_bytes"))
        if mem.get("graph_bytes"):
            weights += f" (graphs loaded {_gb(mem['graph_bytes'])})"
        peak = _gb(mem.get("peak_rss"))
        if mem.get("gpu_peak_allocated") or mem.get("gpu_peak_nvidia_smi"):
            peak += f" (GPU {_gb(mem.get('gpu_peak_allocated') or mem.get('gpu_peak_nvidia_smi'))})"
        lines.append(
            f"| {c['label']} | {_stat(c['steady']['e2e'])} | {_s(c['first_run']['e2e'])} | {_s(c.get('load_s'))} | "
            f"{speed} | {psnr_s} | {ov_s} | {peak} | {weights} | {ratio} |"
        )
    if a["fastest_eager"]:
        lines += ["", f"Fastest eager PyTorch configuration: {a['fastest_eager']}."]
    table_stages = PLOT_STAGES + tuple(  # the feature cache's steps, where some configuration ran them
        s for s in ("unet_shallow", "unet_shallow_grounded") if any(c["steady"]["stages"].get(s) for c in ok)
    )
    lines += [
        "",
        "## Per stage (median (p90, min); UNet rows per call, others per run; first run in brackets)",
        "",
        "| configuration | "
        + " | ".join(STAGES[s] for s in table_stages)
        + " | plain SD UNet step (control) |",
        "|---|" + "---|" * (len(table_stages) + 1),
    ]
    for c in ok:
        cells = []
        for s in table_stages:
            st = c["steady"]["stages"].get(s)
            first = c["first_run"]["stages"].get(s)
            cell = _stat(st)
            if st and st.get("calls_per_run", 1) > 1 and s not in PER_CALL_STAGES:
                cell += f" x{st['calls_per_run']} calls"
            if st and s in PER_CALL_STAGES:
                cell += f" x{st['calls_per_run']}"
            cells.append(cell + (f" [{_s(first)}]" if first is not None else ""))
        cells.append(_stat(c.get("sd_unet_step")))
        lines.append(f"| {c['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Achieved GFLOP/s per UNet step against the matmul peak",
        "",
        "| configuration | grounded step | plain step | peak used |",
        "|---|---|---|---|",
    ]
    for c in ok:
        d = a["derived"].get(c["label"], {})
        cells = []
        for s in ("unet_grounded", "unet_plain"):
            g, share = d.get(f"gflops_{s}"), d.get(f"peak_share_{s}")
            cells.append(
                "-" if g is None else f"{g:.0f} GFLOP/s" + (f" ({_pct(share)} of peak)" if share else "")
            )
        _, peak = peak_for(record, c)
        peak_s = f"{d['peak_name']} {peak:.0f} GFLOP/s" if peak else "-"
        lines.append(f"| {c['label']} | {cells[0]} | {cells[1]} | {peak_s} |")
    lines += [
        "",
        "## Targets (our runtime)",
        "",
        "| target | configuration | measured | limit | verdict | margin | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in a["targets"]:
        value = "-" if t.value is None else _num(t.value, t.unit)
        limit = ("&ge; " if t.better == "higher" else "&le; ") + _num(t.limit, t.unit)
        lines.append(f"| {t.name} | {t.config} | {value} | {limit} | {t.verdict} | {t.margin} | {t.note} |")
    bad = [c for c in record.get("configs", []) if not _ok(c)]
    if bad or record.get("skipped"):
        lines += ["", "## Not measured", ""]
        lines += [f"- {c['label']}: {c.get('status', '?')}: {c.get('reason', '')}" for c in bad]
        lines += [f"- {s['label']}: skipped: {s['reason']}" for s in record.get("skipped", [])]
    keys = sorted({k for c in ok for k in (c.get("engine_keys") or [])})
    if keys:
        lines += ["", "Engines: " + ", ".join(f"`{k}`" for k in keys)]
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any], path: Path) -> None:
    """Per-stage bars (log scale) and end-to-end bars, one colour per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in record.get("configs", []) if _ok(c)]
    palette = {"ours": plt.cm.Blues, "eager": plt.cm.Oranges, "reference": plt.cm.Greys}
    counts = {k: sum(c["kind"] == k for c in ok) for k in palette}
    seen = dict.fromkeys(palette, 0)
    colors = []
    for c in ok:
        k = c["kind"]
        seen[k] += 1
        lo = 0.35 if k == "reference" else 0.45
        colors.append(palette[k](lo + 0.3 * seen[k] / max(counts[k], 1)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [3, 1.4]})
    width = 0.8 / max(len(ok), 1)
    for i, (c, color) in enumerate(zip(ok, colors)):
        ys = [_median(c, "steady", "stages", s) or 0.0 for s in PLOT_STAGES]
        xs = [j + (i - (len(ok) - 1) / 2) * width for j in range(len(PLOT_STAGES))]
        ax1.bar(xs, [y * 1000 for y in ys], width, color=color, label=c["label"])
    ax1.set_xticks(range(len(PLOT_STAGES)), [STAGES[s] for s in PLOT_STAGES], fontsize=9)
    ax1.set_yscale("log")
    ax1.set_ylabel("ms (median; UNet: per call)")
    ax1.set_title("per stage")
    ax1.legend(
        fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(ok), 4), frameon=False
    )
    e2e = [_median(c, "steady", "e2e") or 0.0 for c in ok]
    ax2.barh(range(len(ok)), e2e, color=colors)
    ax2.set_yticks(range(len(ok)), [c["label"] for c in ok], fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel("seconds (median)")
    ax2.set_title("end to end")
    for y, v in enumerate(e2e):
        ax2.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    env = record.get("env") or {}
    gpus = env.get("gpus") or []
    where = (
        gpus[0].get("name", "GPU")
        if record["scenario"].get("device") == "cuda" and gpus
        else env.get("cpu", "")
    )
    fig.suptitle(f"{record['key']} ({where})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(record: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``OUT/<key>.md`` and ``OUT/<key>.png``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, png = out_dir / f"{record['key']}.md", out_dir / f"{record['key']}.png"
    text = markdown(record)
    md.write_text(text + f"\n![per-stage and end-to-end times]({png.name})\n")
    plot(record, png)
    return md, png


def load_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a bench.jsonl, oldest first (blank lines ignored)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest_by_key(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        out[r["key"]] = r
    return out
