"""Samplers (gligen_rt.core.schedulers) against diffusers' schedulers and the original PLMS, on
identical inputs with a deterministic fake model eps = 0.1 x + 0.05 sin(t)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler

from gligen_rt.core.errors import RequestError
from gligen_rt.core.schedulers import ALPHAS_CUMPROD, SCHEDULERS, make_scheduler

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
STEPS = [1, 2, 5, 50]
RTOL = 1e-5  # max abs difference relative to the result's magnitude


def fake_eps(x, t: float):
    """Deterministic stand-in for the UNet; works on numpy arrays and torch tensors."""
    return x * 0.1 + 0.05 * math.sin(float(t))


def noise(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 4, 8, 8)).astype(np.float32)


def assert_close(got, ref, rtol: float = RTOL) -> None:
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    err = np.abs(got - ref).max() / max(1.0, np.abs(ref).max())
    assert err < rtol, f"relative max error {err:.3g}"


def run_ours(name: str, steps: int, x_t: np.ndarray, eps_fn=fake_eps):
    sched = make_scheduler(name, steps)
    x = x_t * sched.init_noise_sigma
    for i in range(len(sched.timesteps)):
        x = sched.step(x, i, eps_fn)
    return x, sched


def run_diffusers(sched, steps: int, x_t: np.ndarray) -> np.ndarray:
    """The standard diffusers loop (scale_model_input, model, step)."""
    sched.set_timesteps(steps)
    x = torch.from_numpy(x_t) * sched.init_noise_sigma
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        x = sched.step(fake_eps(x_in, float(t)), t, x).prev_sample
    return x.numpy()


def diffusers_scheduler(name: str):
    if name == "ddim":
        return DDIMScheduler(
            **SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"
        )
    if name == "dpmpp_2m":  # SD config as from_config(SD's scheduler) gives: linspace spacing by default
        return DPMSolverMultistepScheduler(**SD, algorithm_type="dpmsolver++", solver_order=2, steps_offset=1)
    if name == "euler":
        return EulerDiscreteScheduler(**SD, steps_offset=1)
    raise KeyError(name)


def test_noise_schedule_constants():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # the original's
    np.testing.assert_allclose(ALPHAS_CUMPROD, torch.cumprod(1 - betas, 0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(ALPHAS_CUMPROD, DDIMScheduler(**SD).alphas_cumprod.numpy(), rtol=1e-5)


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "euler"])
@pytest.mark.parametrize("steps", STEPS)
def test_equals_diffusers_full_loop(name, steps):
    x_t = noise(steps)
    ours, sched = run_ours(name, steps, x_t)
    ref_sched = diffusers_scheduler(name)
    ref = run_diffusers(ref_sched, steps, x_t)
    np.testing.assert_allclose(sched.timesteps, ref_sched.timesteps.numpy(), rtol=0, atol=1e-3)
    # diffusers' float32 sigma near t = 0 is off by ~1e-5 relative (1 - a_0 = 0.00085 in float32)
    assert sched.init_noise_sigma == pytest.approx(float(ref_sched.init_noise_sigma), rel=1e-4)
    assert ours.dtype == np.float32
    assert_close(ours, ref)


def test_ddim_timesteps_are_the_originals():
    sched = make_scheduler("ddim", 50)
    assert list(sched.timesteps) == list(np.asarray(range(0, 1000, 20))[::-1] + 1)  # 981, 961, ..., 1
    assert sched.timesteps.dtype == np.int64


def original_plms(x_t: np.ndarray, steps: int, eps_fn) -> tuple[np.ndarray, int]:
    """Direct transcription of the original GLIGEN/LDM PLMS sampler (plms.py: make_schedule,
    plms_sampling, p_sample_plms with old_eps and the first-step double evaluation), float32
    schedule buffers as in the original. Returns (x_0, number of model calls)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphacums = np.cumprod(1.0 - betas).astype(np.float32)
    c = 1000 // steps
    ddim_timesteps = np.asarray(list(range(0, 1000, c))) + 1
    ddim_alphas = alphacums[ddim_timesteps]
    ddim_alphas_prev = np.asarray([alphacums[0]] + alphacums[ddim_timesteps[:-1]].tolist(), dtype=np.float32)
    ddim_sqrt_one_minus_alphas = np.sqrt(1.0 - ddim_alphas)
    calls = 0

    def model(x, t):
        nonlocal calls
        calls += 1
        return eps_fn(x, t)

    def p_sample_plms(x, t, index, old_eps, t_next):
        def get_x_prev_and_pred_x0(e_t, index):
            a_t = ddim_alphas[index]
            a_prev = ddim_alphas_prev[index]
            sqrt_one_minus_at = ddim_sqrt_one_minus_alphas[index]
            pred_x0 = (x - sqrt_one_minus_at * e_t) / np.sqrt(a_t)
            dir_xt = np.sqrt(1.0 - a_prev) * e_t
            return np.sqrt(a_prev) * pred_x0 + dir_xt, pred_x0

        e_t = model(x, t)
        if len(old_eps) == 0:
            x_prev, pred_x0 = get_x_prev_and_pred_x0(e_t, index)
            e_t_next = model(x_prev, t_next)
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_prev, pred_x0 = get_x_prev_and_pred_x0(e_t_prime, index)
        return x_prev, pred_x0, e_t

    img = x_t
    time_range = np.flip(ddim_timesteps)
    total_steps = ddim_timesteps.shape[0]
    old_eps: list[np.ndarray] = []
    for i, step in enumerate(time_range):
        index = total_steps - i - 1
        ts = step
        ts_next = time_range[min(i + 1, len(time_range) - 1)]
        img, _, e_t = p_sample_plms(img, ts, index=index, old_eps=old_eps, t_next=ts_next)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
    return img, calls


@pytest.mark.parametrize("steps", STEPS)
def test_plms_equals_original(steps):
    x_t = noise(steps)
    ref, ref_calls = original_plms(x_t, steps, fake_eps)
    calls = []

    def counting_eps(x, t):
        calls.append(t)
        return fake_eps(x, t)

    ours, sched = run_ours("plms", steps, x_t, counting_eps)
    assert list(sched.timesteps) == list(np.flip(np.asarray(range(0, 1000, 1000 // steps)) + 1))
    assert len(calls) == ref_calls == steps + 1  # one extra evaluation on the first step
    assert calls[1] == float(sched.timesteps[min(1, steps - 1)])  # ... at the next timestep
    assert_close(ours, ref)


@pytest.mark.parametrize("steps", [2, 5, 50])
def test_plms_also_equals_diffusers_pndm_skip_prk(steps):
    """Second oracle: diffusers' PNDMScheduler(skip_prk_steps=True) with SD's config evaluates the
    model S + 1 times (its timesteps repeat the second one) and is the original PLMS, up to
    float32 rounding of its schedule (checked here for S >= 2; at S = 1 it skips the second call)."""
    x_t = noise(steps)
    ours, _ = run_ours("plms", steps, x_t)
    pndm = PNDMScheduler(**SD, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    assert_close(ours, run_diffusers(pndm, steps, x_t))
    assert len(pndm.timesteps) == steps + 1


@pytest.mark.parametrize("name", SCHEDULERS)
def test_torch_tensors_give_the_numpy_result(name):
    x_t = noise(3)
    ref, _ = run_ours(name, 5, x_t)
    got, _ = run_ours(name, 5, torch.from_numpy(x_t.copy()))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, atol=1e-6)
    sched = make_scheduler(name, 5)
    x0, n = torch.from_numpy(x_t), torch.from_numpy(noise(4))
    np.testing.assert_allclose(
        sched.add_noise(x0, n, 2).numpy(), sched.add_noise(x_t, noise(4), 2), rtol=1e-6
    )


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "euler"])
def test_add_noise_equals_diffusers(name):
    x0, n = noise(5), noise(6)
    ours = make_scheduler(name, 10)
    ref = diffusers_scheduler(name)
    ref.set_timesteps(10)
    for i in (0, 4, 9):
        t = ref.timesteps[i : i + 1]
        expected = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(n), t).numpy()
        assert_close(ours.add_noise(x0, n, i), expected)


def test_add_noise_is_q_sample_for_plms():
    sched = make_scheduler("plms", 50)
    x0, n = noise(7), noise(8)
    a = ALPHAS_CUMPROD[sched.timesteps[10]]
    np.testing.assert_allclose(
        sched.add_noise(x0, n, 10), np.sqrt(a) * x0 + np.sqrt(1 - a) * n, rtol=1e-6, atol=1e-6
    )


def test_steps_must_run_in_order():
    sched = make_scheduler("plms", 5)
    x = noise()
    x = sched.step(x, 0, fake_eps)
    with pytest.raises(ValueError):
        sched.step(x, 2, fake_eps)


@pytest.mark.parametrize(
    ("name", "steps"), [("heun", 10), ("plms", 0), ("ddim", 1001), ("euler", 2.5), ("dpmpp_2m", True)]
)
def test_make_scheduler_rejects(name, steps):
    with pytest.raises(RequestError) as info:
        make_scheduler(name, steps)
    assert "\n" not in str(info.value)


def test_core_modules_are_torch_free():
    code = (
        "import sys; import gligen_rt.core.schedule, gligen_rt.core.schedulers, gligen_rt.core.tokenizer; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'clip', 'open_clip') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
