"""The parity check of an exported graph: ONNX Runtime (CPU) against the PyTorch reference.

Metric, per output and case: ``max|onnx - torch| / max|torch|`` (max relative error; the scale is
the output's own range, so near-zero elements do not blow it up). An export passes when every
output of every case is finite and below the tolerance: 1e-4 for FP32 graphs, 2e-2 for FP16.
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

    @property
    def max_rel_err(self) -> float:
        return max(self.max_rel.values(), default=0.0)

    @property
    def passed(self) -> bool:
        return bool(self.max_rel) and self.max_rel_err < self.tolerance

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
) -> ParityReport:
    """Run every case through ``session`` (ONNX Runtime) and ``reference`` (callable: named numpy
    inputs -> {output: tensor}) and collect the errors. Does not raise; see ``ParityReport.passed``.

    ``expected_shapes`` (callable: inputs -> {output: shape}) adds a shape check: an ONNX output of
    another shape counts as an infinite error."""
    report = ParityReport(engine, tolerance)
    out_names = [o.name for o in session.get_outputs()]
    worst = -1.0
    for label, inputs in cases:
        want = {k: v.detach().float().cpu().numpy() for k, v in reference(inputs).items()}
        got = dict(zip(out_names, session.run(out_names, inputs)))
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
            if rel > worst:
                worst, report.worst_case = rel, f"{label} {name}"
        report.cases += 1
    return report
