"""FP16 parity is measured against the model's own sensitivity to FP16 rounding (export/parity.py).

The documented quick benchmark on the tiny random model failed its FP16 export at 2.02 % against a
2 % limit; the FP32 model itself moved 2.07 % when its inputs moved by FP16's unit roundoff, so the
limit, not the FP16 graph, was wrong for an ill-conditioned model. These stand-ins pin both sides:
the same FP16-sized error passes for an ill-conditioned reference and fails for a well-conditioned
one.
"""

from __future__ import annotations

import numpy as np

from gligen_rt.export.parity import FP16_ROUNDOFF, SENSITIVITY_FACTOR, TOLERANCE, check_parity

X = np.linspace(0.5, 1.0, 64, dtype=np.float32)


class Output:
    name = "y"


class FakeSession:
    """An "FP16 graph": the reference's output plus a fixed error of 2.5 % of its range."""

    def __init__(self, reference) -> None:
        self.reference = reference

    def get_outputs(self):
        return [Output()]

    def run(self, names, inputs):
        y = self.reference(inputs)["y"]
        return [y + 0.025 * np.abs(y).max()]


def ill_conditioned(inputs):  # a 1e-3 relative input change moves the output by ~100 %
    return {"y": np.sin(4000.0 * inputs["x"]).astype(np.float32)}


def well_conditioned(inputs):
    return {"y": (2.0 * inputs["x"]).astype(np.float32)}


def _check(reference, roundoff):
    cases = [("case", {"x": X, "timestep": np.array([601.0], np.float32)})]
    return check_parity(
        "unet", FakeSession(reference), reference, cases, TOLERANCE["fp16"], None, roundoff, ["timestep"]
    )


def test_fp16_error_within_the_models_own_sensitivity_passes() -> None:
    report = _check(ill_conditioned, FP16_ROUNDOFF)
    assert report.max_rel_err > TOLERANCE["fp16"]  # above the fixed limit ...
    assert report.sensitivity["y"] * SENSITIVITY_FACTOR > report.max_rel_err  # ... within the model's own
    assert report.passed
    assert report.to_manifest()["y.fp32_sensitivity"] == report.sensitivity["y"]


def test_fp16_error_beyond_a_well_conditioned_models_sensitivity_fails() -> None:
    report = _check(well_conditioned, FP16_ROUNDOFF)
    assert report.sensitivity["y"] < 1e-3
    assert not report.passed and report.limit == TOLERANCE["fp16"] == report.worst_limit


def test_without_roundoff_the_fixed_tolerance_decides() -> None:
    report = _check(ill_conditioned, None)
    assert not report.sensitivity and not report.passed
