"""The parity check of an exported graph: ONNX Runtime (CPU) against the PyTorch reference.

Metric, per output and case: ``max|onnx - torch| / max|torch|`` (max relative error; the scale is
the output's own range, so near-zero elements do not blow it up). An export passes when every
output of every case is finite and below the tolerance: 1e-4 for FP32 graphs, 2e-2 for FP16.

FP16 and the model's own conditioning: an FP16 graph cannot be closer to the FP32 model than the
FP32 model is to itself when its inputs move by FP16's unit roundoff (2^-11, relative). For a
well-conditioned model (SD-1.4's trained weights) that is far below 2e-2; a random model at a tiny
size can be so ill-conditioned that it alone moves the output by 2 % (measured: the tiny random
UNet at 64 px, gate 0.5, moved 2.07 % in FP32 under a +-2^-11 input perturbation where the FP16
graph differed by 2.02 %). So FP16 parity also measures that sensitivity (``roundoff``: the FP32
reference on the inputs rounded to FP16 and on inputs times (1 +- 2^-11), the largest change of
`PERTURBATIONS` runs per case) and the limit of a case is
``max(tolerance, SENSITIVITY_FACTOR * sensitivity)``: the FP16 graph passes when it loses no more
than FP16's rounding of the inputs already costs the model, and the manifest records both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gligen_rt.core.errors import GligenError

log = logging.getLogger(__name__)

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
FP16_ROUNDOFF = 2.0**-11  # FP16's unit roundoff (relative): half the spacing of FP16 values at 1.0
# An FP16 graph rounds at every layer, not only its inputs: it may lose up to twice what rounding
# the inputs alone costs the FP32 model before it counts as a real loss.
SENSITIVITY_FACTOR = 2.0
# Reference runs per case that measure the sensitivity (the inputs rounded to FP16, then random
# +-roundoff moves): one random sample underestimates it by up to 2x on the tiny random UNet.
PERTURBATIONS = 3


class ExportError(GligenError):
    """An export cannot be produced (exporter failure, graph does not match its spec, parity)."""


class ParityError(ExportError):
    """An exported graph's outputs differ from the PyTorch reference beyond the tolerance."""


@dataclass
class ParityReport:
    """Parity numbers of one engine: worst relative/absolute error per output over all cases."""

    engine: str
    tolerance: float
    max_rel: dict[str, float] = field(default_factory=dict)
    max_abs: dict[str, float] = field(default_factory=dict)
    worst_case: str = ""
    cases: int = 0
    # FP16 only: per output, the FP32 reference's own max relative change under an input
    # perturbation of FP16's roundoff, and the worst ratio error / case limit over all cases
    sensitivity: dict[str, float] = field(default_factory=dict)
    worst_ratio: float = 0.0
    worst_limit: float = 0.0  # the limit of the worst case (FP16: its own sensitivity bound)

    @property
    def max_rel_err(self) -> float:
        return max(self.max_rel.values(), default=0.0)

    @property
    def limit(self) -> float:
        """The largest limit any case had (the tolerance, or the sensitivity bound above it)."""
        return max([self.tolerance] + [SENSITIVITY_FACTOR * v for v in self.sensitivity.values()])

    @property
    def passed(self) -> bool:
        if not self.max_rel:
            return False
        if self.sensitivity:
            return self.worst_ratio < 1.0
        return self.max_rel_err < self.tolerance

    def to_manifest(self) -> dict[str, float]:
        """Flat {metric: float} for EngineManifest.parity."""
        out: dict[str, float] = {
            "max_rel_err": self.max_rel_err,
            "tolerance": self.tolerance,
            "cases": float(self.cases),
        }
        for name, v in self.max_rel.items():
            out[f"{name}.max_rel_err"] = v
        for name, v in self.max_abs.items():
            out[f"{name}.max_abs_err"] = v
        for name, v in self.sensitivity.items():
            out[f"{name}.fp32_sensitivity"] = v
        if self.sensitivity:
            out["limit"] = self.limit
        return out


def rel_error(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max|a-b| / max|b|, max|a-b|) in float64; inf when ``actual`` has a NaN/Inf or shapes differ."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape or not np.isfinite(a).all():
        return float("inf"), float("inf")
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    return (diff / scale if scale > 0 else diff), diff


def ort_session(onnx_path: str | os.PathLike[str], threads: int = 0) -> Any:
    """An ONNX Runtime CPU session on the file (external data is read from beside it)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # No busy-waiting between runs: the PyTorch reference runs on the same cores in between.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(os.fspath(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])


def check_parity(
    engine: str,
    session: Any,
    reference: Any,
    cases: Iterable[tuple[str, dict[str, np.ndarray]]],
    tolerance: float,
    expected_shapes: Any = None,
    roundoff: float | None = None,
    exact_inputs: Iterable[str] = (),
) -> ParityReport:
    """Run every case through ``session`` (ONNX Runtime) and ``reference`` (callable: named numpy
    inputs -> {output: tensor}) and collect the errors. Does not raise; see ``ParityReport.passed``.

    ``expected_shapes`` (callable: inputs -> {output: shape}) adds a shape check: an ONNX output of
    another shape counts as an infinite error. ``roundoff`` (FP16 graphs: FP16_ROUNDOFF) also runs
    the reference on the float inputs rounded to FP16 and times (1 +- roundoff) (random signs,
    seeded; ``exact_inputs``, the inputs the graph keeps in FP32, are left alone): a case passes
    below max(tolerance, SENSITIVITY_FACTOR * the largest change)."""
    report = ParityReport(engine, tolerance)
    out_names = [o.name for o in session.get_outputs()]
    exact = set(exact_inputs)
    rng = np.random.default_rng(0)
    worst = -1.0
    for label, inputs in cases:
        want = {k: _numpy(v) for k, v in reference(inputs).items()}
        got = dict(zip(out_names, session.run(out_names, inputs)))
        moved: list[dict[str, np.ndarray]] = []
        if roundoff is not None:  # one sample underestimates: the max over the FP16-rounded inputs
            for variant in range(PERTURBATIONS):  # and over random +-roundoff relative moves
                perturbed = {
                    k: _perturb(v, roundoff, rng, variant) if v.dtype == np.float32 and k not in exact else v
                    for k, v in inputs.items()
                }
                moved.append({k: _numpy(v) for k, v in reference(perturbed).items()})
        shapes = expected_shapes(inputs) if expected_shapes is not None else {}
        for name in out_names:
            rel, diff = rel_error(got[name], want[name])
            if name in shapes and tuple(got[name].shape) != tuple(shapes[name]):
                log.warning(
                    "%s %s: %s has shape %s, the spec says %s",
                    engine,
                    label,
                    name,
                    got[name].shape,
                    shapes[name],
                )
                rel = diff = float("inf")
            log.debug("%s %s %s: rel %.3g abs %.3g", engine, label, name, rel, diff)
            report.max_rel[name] = max(report.max_rel.get(name, 0.0), rel)
            report.max_abs[name] = max(report.max_abs.get(name, 0.0), diff)
            key, case_limit = rel, tolerance
            if moved:
                sens = max(rel_error(m[name], want[name])[0] for m in moved)
                report.sensitivity[name] = max(report.sensitivity.get(name, 0.0), sens)
                case_limit = max(tolerance, SENSITIVITY_FACTOR * sens)
                key = rel / case_limit
                report.worst_ratio = max(report.worst_ratio, key)
                log.debug("%s %s %s: FP32 sensitivity to FP16 roundoff %.3g", engine, label, name, sens)
            if key > worst:
                worst, report.worst_case, report.worst_limit = key, f"{label} {name}", case_limit
        report.cases += 1
    return report


def _perturb(v: np.ndarray, roundoff: float, rng: np.random.Generator, variant: int) -> np.ndarray:
    """variant 0: ``v`` rounded to FP16 and back (what an FP16 graph's input cast does); others:
    ``v`` times (1 +- roundoff), random signs."""
    if variant == 0:
        return v.astype(np.float16).astype(v.dtype)
    return (v * (1.0 + roundoff * rng.choice([-1.0, 1.0], v.shape))).astype(v.dtype)


def _numpy(v: Any) -> np.ndarray:
    return v.detach().float().cpu().numpy() if hasattr(v, "detach") else np.asarray(v, dtype=np.float32)
