"""Scheduled sampling (gligen_rt.core.schedule): gates equal the original / diffusers expressions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gligen_rt.core.errors import RequestError
from gligen_rt.core.schedule import PlanStep, alpha_generator, beta_gates, make_plan


def original_alpha_generator(length, type=None):  # noqa: A002 - the original's signature
    """Transcription of the original repository's alpha_generator (gligen_inference.py)."""
    if type is None:
        type = [1, 0, 0]
    assert len(type) == 3
    assert type[0] + type[1] + type[2] == 1
    stage0_length = int(type[0] * length)
    stage1_length = int(type[1] * length)
    stage2_length = length - stage0_length - stage1_length
    if stage1_length != 0:
        decay_alphas = list(np.arange(start=0, stop=1, step=1 / stage1_length)[::-1])
    else:
        decay_alphas = []
    alphas = [1] * stage0_length + decay_alphas + [0] * stage2_length
    assert len(alphas) == length
    return alphas


TYPES = [
    (1.0, 0.0, 0.0),
    (0.3, 0.0, 0.7),
    (0.9, 0.0, 0.1),
    (0.7, 0.0, 0.3),
    (0.5, 0.3, 0.2),
    (0.0, 1.0, 0.0),
    (0.2, 0.5, 0.3),
]


@pytest.mark.parametrize("alpha_type", TYPES)
@pytest.mark.parametrize("length", [1, 2, 7, 10, 50, 98, 100, 250])
def test_alpha_generator_equals_original(alpha_type, length):
    try:
        expected = original_alpha_generator(length, list(alpha_type))
    except AssertionError:  # np.arange gave one decay value too many: the original fails
        with pytest.raises(RequestError):
            alpha_generator(length, alpha_type)
        return
    got = alpha_generator(length, alpha_type)
    assert len(got) == length
    assert all(type(v) is float for v in got)
    assert got == tuple(float(v) for v in expected)  # exact, not approximate


def test_alpha_generator_decay_values():
    # n1 = 5 -> 0.8, 0.6, 0.4, 0.2, 0.0 (starts below 1, ends at 0)
    got = alpha_generator(10, (0.3, 0.5, 0.2))
    assert got[:3] == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(got[3:8], [0.8, 0.6, 0.4, 0.2, 0.0], atol=1e-12)
    assert got[8:] == (0.0, 0.0)
    assert alpha_generator(50, (0.3, 0.0, 0.7)) == (1.0,) * 15 + (0.0,) * 35


def test_alpha_generator_arange_overshoot_is_a_request_error():
    assert len(np.arange(0, 1, 1 / 49)) == 50  # the float pitfall itself
    with pytest.raises(RequestError) as info:
        alpha_generator(49, (0.0, 1.0, 0.0))
    assert "\n" not in str(info.value)


def test_alpha_generator_sum_tolerance():
    assert 0.2 + 0.7 + 0.1 != 1  # the original's exact check rejects this; we accept within 1e-6
    assert alpha_generator(10, (0.2, 0.7, 0.1))[:2] == (1.0, 1.0)


@pytest.mark.parametrize(
    "alpha_type",
    [
        (0.5, 0.5, 0.5),
        (0.3, 0.0, 0.6),
        (1.2, -0.2, 0.0),
        (float("nan"), 0.0, 1.0),
        (0.5, 0.5),
        (1, 0, 0, 0),
        "abc",
    ],
)
def test_alpha_generator_rejects_bad_types(alpha_type):
    with pytest.raises(RequestError) as info:
        alpha_generator(10, alpha_type)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("length", [0, -3, 2.5, True])
def test_rejects_bad_lengths(length):
    with pytest.raises(RequestError):
        alpha_generator(length, (1, 0, 0))
    with pytest.raises(RequestError):
        beta_gates(length, 0.3)


def test_beta_gates_diffusers_expression():
    assert beta_gates(50, 0.3) == (1.0,) * 15 + (0.0,) * 35
    assert beta_gates(100, 0.29).count(1.0) == int(0.29 * 100) == 28  # float pitfall reproduced
    assert beta_gates(7, 0.0) == (0.0,) * 7
    assert beta_gates(7, 1.0) == (1.0,) * 7
    for length in (1, 3, 50, 999):
        for beta in (0.1, 0.3, 0.55, 0.7):
            assert beta_gates(length, beta).count(1.0) == int(beta * length)


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan"), "x"])
def test_beta_gates_rejects_bad_beta(beta):
    with pytest.raises(RequestError):
        beta_gates(10, beta)


def test_make_plan_engines():
    timesteps = np.array([981, 961, 941, 921, 901], dtype=np.int64)
    gates = alpha_generator(5, (0.2, 0.4, 0.4))  # 1.0, 0.5, 0.0, 0.0, 0.0
    plan = make_plan(timesteps, gates, plain_available=True)
    assert [s.index for s in plan] == [0, 1, 2, 3, 4]
    assert [s.timestep for s in plan] == [981, 961, 941, 921, 901]
    assert all(type(s.timestep) is int for s in plan)
    assert [s.gate for s in plan] == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert [s.engine for s in plan] == ["unet", "unet", "unet_plain", "unet_plain", "unet_plain"]

    no_plain = make_plan(timesteps, gates, plain_available=False)
    assert [s.engine for s in no_plain] == ["unet"] * 5
    assert [s.gate for s in no_plain] == [1.0, 0.5, 0.0, 0.0, 0.0]


def test_make_plan_feature_cache():
    """Every K-th plain step (from the first) runs a whole UNet, the others unet_shallow; grounded
    steps never use the cache; K 0 or 1 is off."""
    timesteps = np.arange(10, 0, -1)
    gates = beta_gates(10, 0.3)  # 3 grounded, 7 plain
    plan = make_plan(timesteps, gates, plain_available=True, feature_cache=3)
    assert [s.engine for s in plan] == ["unet"] * 3 + ["unet_plain", "unet_shallow", "unet_shallow"] * 2 + [
        "unet_plain"
    ]
    assert [s.gate for s in plan] == list(gates)
    single = make_plan(timesteps, gates, plain_available=False, feature_cache=2)
    assert [s.engine for s in single] == ["unet"] * 3 + ["unet", "unet_shallow"] * 3 + ["unet"]
    for off in (0, 1):
        assert make_plan(timesteps, gates, True, feature_cache=off) == make_plan(timesteps, gates, True)


def test_make_plan_grounded_feature_cache():
    """feature_cache_grounded K: every K-th grounded step (from the first) runs the whole grounded
    UNet, the others unet_shallow_grounded with their own gate; each run of one phase starts whole,
    so a shallow step never reuses the other phase's deep features."""
    timesteps = np.arange(10, 0, -1)
    gates = (1.0, 1.0, 0.6, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    plan = make_plan(timesteps, gates, plain_available=True, feature_cache=2, feature_cache_grounded=3)
    assert [s.engine for s in plan] == ["unet", "unet_shallow_grounded", "unet_shallow_grounded", "unet"] + [
        "unet_plain",
        "unet_shallow",
    ] * 3
    assert [s.gate for s in plan] == list(gates)
    grounded_only = make_plan(timesteps, gates, True, feature_cache_grounded=2)
    assert [s.engine for s in grounded_only][:4] == ["unet", "unet_shallow_grounded"] * 2
    assert {s.engine for s in grounded_only[4:]} == {"unet_plain"}
    back_and_forth = make_plan(np.arange(6, 0, -1), (1.0, 1.0, 0.0, 0.0, 1.0, 1.0), False, 2, 2)
    assert [s.engine for s in back_and_forth] == ["unet", "unet_shallow_grounded", "unet", "unet_shallow"] + [
        "unet",
        "unet_shallow_grounded",
    ]
    for off in (0, 1):
        assert make_plan(timesteps, gates, True, feature_cache_grounded=off) == make_plan(
            timesteps, gates, True
        )


def test_make_plan_float_timesteps_and_errors():
    plan = make_plan(np.array([999.0, 499.5]), (1.0, 0.0), plain_available=True)
    assert [s.timestep for s in plan] == [999.0, 499.5]
    assert plan[0] == PlanStep(index=0, timestep=999.0, gate=1.0, engine="unet")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan[0].gate = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError):
        make_plan(np.array([3, 2, 1]), (1.0, 0.0), plain_available=True)
    with pytest.raises(ValueError):
        make_plan(np.array([2, 1]), (1.0, 1.5), plain_available=True)
