"""Samplers over arrays: PLMS and DDIM (the original GLIGEN's), DPM-Solver++(2M) and Euler (diffusers').

Torch-free. ``step`` uses only arithmetic operators with python-float scalars, so ``x`` may be a
numpy array or a torch tensor (any device, any float dtype) and the result has ``x``'s type.

Notation (one training schedule, T = 1000, t in {0..999}):

    beta_t        = linspace(sqrt(0.00085), sqrt(0.012), T)[t] ** 2        (float64, "scaled_linear")
    a_t           = prod_{s<=t} (1 - beta_s)                                ALPHAS_CUMPROD[t]
    eps           = eps_fn(x_in, t)                                         the model's noise prediction
    x0            = (x - sqrt(1 - a_t) eps) / sqrt(a_t)                     predicted clean latent (VP space)

DDIM (eta 0) and PLMS, original conventions: c = T // S, timesteps = (c*k + 1 for k < S) descending,
a_prev = a at the next (smaller) timestep, and a_0 = ALPHAS_CUMPROD[0] (not 1) after the last step:

    x_prev        = sqrt(a_prev) x0(e) + sqrt(1 - a_prev) e                 with e = eps (DDIM) or e' (PLMS)
    PLMS e'       first step:  (e_t + eps_fn(x_prev(e_t), t_next)) / 2     t_next = next timestep (last: t)
                  then Adams-Bashforth on stored raw e_t (last 1/2/3):
                  (3 e_t - e_1) / 2,  (23 e_t - 16 e_1 + 5 e_2) / 12,  (55 e_t - 59 e_1 + 37 e_2 - 9 e_3) / 24

DPM-Solver++(2M), diffusers' DPMSolverMultistepScheduler (SD config, "linspace" spacing,
lower_order_final, final sigma 0); sigma_t = sqrt((1 - a_t) / a_t), alpha = 1/sqrt(1 + sigma^2),
s = sigma * alpha, lambda = log(alpha / s) = -log(sigma), h = lambda_next - lambda:

    D             = x0 (first step, last step)  or  x0 + (h / (2 h_prev)) (x0 - x0_prev)
    x_prev        = (s_next / s) x - alpha_next (exp(-h) - 1) D             (last step: x_prev = x0)

Euler, diffusers' EulerDiscreteScheduler (SD config, "linspace" spacing, fractional timesteps,
sigmas interpolated linearly in t, final sigma 0). x lives in the variance-exploding space
x = x_vp * sqrt(1 + sigma^2); the model sees x / sqrt(1 + sigma^2) ("scale_model_input"):

    x_prev        = x + eps (sigma_next - sigma)

``add_noise(x0, noise, i)`` is q_sample at step i in the sampler's own x space:
sqrt(a_t) x0 + sqrt(1 - a_t) noise (VP samplers), x0 + sigma_i noise (Euler).

Departure from the original: for step counts S that do not divide 1000, the original's
``range(0, 1000, c)`` yields more than S timesteps (and for S = 3, 9, 27, 37, ... an out-of-range
timestep 1000). Here PLMS/DDIM always take exactly S timesteps c*k + 1 (diffusers' "leading"
spacing); they equal the original's whenever S divides 1000 (1, 2, 4, 5, 8, 10, 20, 25, 40, 50, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from gligen_rt.core.errors import RequestError

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012

BETAS: np.ndarray = np.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=np.float64) ** 2
"""(1000,) float64: SD's "scaled_linear" betas."""
ALPHAS_CUMPROD: np.ndarray = np.cumprod(1.0 - BETAS)
"""(1000,) float64: a_t = prod_{s<=t} (1 - beta_s)."""
BETAS.setflags(write=False)
ALPHAS_CUMPROD.setflags(write=False)

SCHEDULERS = ("plms", "ddim", "dpmpp_2m", "euler")

X = TypeVar("X")  # a float array: numpy.ndarray or torch.Tensor, (B, 4, h, w)
EpsFn = Callable[[Any, float], Any]  # eps_fn(x_in: X, t: float) -> eps: X, same shape


class Scheduler:
    """Base class: one instance per generation (PLMS and DPM-Solver++ keep state between steps).

    Attributes:
        name: the sampler's name (``SCHEDULERS``).
        timesteps: (S,) the model timestep of each step, descending; int64, float64 for euler.
        init_noise_sigma: x_T = init_noise_sigma * noise, noise ~ N(0, 1).

    ``step(x, i, ...)`` must be called for i = 0, 1, ..., S-1 in order.
    """

    name = ""

    def __init__(self, timesteps: np.ndarray, init_noise_sigma: float = 1.0) -> None:
        self.timesteps = timesteps
        self.init_noise_sigma = float(init_noise_sigma)
        self._next = 0

    def __len__(self) -> int:
        return len(self.timesteps)

    def _advance(self, i: int) -> None:
        if i != self._next:
            raise ValueError(
                f"{self.name}: step {i} called, expected step {self._next} (use a fresh scheduler)"
            )
        self._next += 1

    def step(self, x: X, i: int, eps_fn: EpsFn) -> X:
        """One denoising step: x at step i -> x at step i + 1.

        Args:
            x: (B, 4, h, w) float latent at step i, in the sampler's own space.
            i: step index, 0 <= i < S, called in order.
            eps_fn: ``eps_fn(x_in, t) -> eps`` with x_in like x (scaled for euler) and t the model
                timestep as a python float; PLMS calls it twice on its first step.

        Returns:
            (B, 4, h, w) latent at step i + 1 (after the last step: the denoised latent).
        """
        raise NotImplementedError

    def add_noise(self, x0: X, noise: X, i: int) -> X:
        """q_sample(x0, t_i, noise) in this sampler's x space (inpainting's known region at step i).

        Args:
            x0: (B, 4, h, w) clean latent; noise: same shape, N(0, 1); i: step index.
        """
        a = float(ALPHAS_CUMPROD[int(self.timesteps[i])])
        return x0 * math.sqrt(a) + noise * math.sqrt(1.0 - a)


class _DDIMLike(Scheduler):
    """Original LDM/GLIGEN timesteps and the deterministic DDIM update shared by DDIM and PLMS."""

    def __init__(self, steps: int) -> None:
        c = NUM_TRAIN_TIMESTEPS // steps
        ascending = np.arange(steps, dtype=np.int64) * c + 1
        super().__init__(ascending[::-1].copy())
        a = ALPHAS_CUMPROD[ascending]
        a_prev = np.concatenate([ALPHAS_CUMPROD[:1], a[:-1]])
        # indexed by loop step i (descending timesteps)
        self._a = [float(v) for v in a[::-1]]
        self._a_prev = [float(v) for v in a_prev[::-1]]

    def _update(self, x: X, e: X, i: int) -> X:
        a_t, a_prev = self._a[i], self._a_prev[i]
        x0 = (x - e * math.sqrt(1.0 - a_t)) / math.sqrt(a_t)
        return x0 * math.sqrt(a_prev) + e * math.sqrt(1.0 - a_prev)


class DDIMScheduler(_DDIMLike):
    """DDIM, eta 0 (the original's ``--no_plms`` sampler; diffusers' DDIMScheduler with
    set_alpha_to_one=False, steps_offset=1, "leading")."""

    name = "ddim"

    def step(self, x: X, i: int, eps_fn: EpsFn) -> X:
        self._advance(i)
        e = eps_fn(x, float(self.timesteps[i]))
        return self._update(x, e, i)


class PLMSScheduler(_DDIMLike):
    """PLMS as in the original GLIGEN/LDM ``p_sample_plms`` (not diffusers' PNDMScheduler)."""

    name = "plms"

    def __init__(self, steps: int) -> None:
        super().__init__(steps)
        self._old_eps: list[Any] = []  # raw e_t of the last (up to) 3 steps, oldest first

    def step(self, x: X, i: int, eps_fn: EpsFn) -> X:
        self._advance(i)
        t = float(self.timesteps[i])
        e_t = eps_fn(x, t)
        old = self._old_eps
        if not old:
            t_next = float(self.timesteps[min(i + 1, len(self.timesteps) - 1)])
            e_next = eps_fn(self._update(x, e_t, i), t_next)
            e_prime = (e_t + e_next) / 2.0
        elif len(old) == 1:
            e_prime = (e_t * 3.0 - old[-1]) / 2.0
        elif len(old) == 2:
            e_prime = (e_t * 23.0 - old[-1] * 16.0 + old[-2] * 5.0) / 12.0
        else:
            e_prime = (e_t * 55.0 - old[-1] * 59.0 + old[-2] * 37.0 - old[-3] * 9.0) / 24.0
        old.append(e_t)
        if len(old) > 3:
            old.pop(0)
        return self._update(x, e_prime, i)


def _interp_sigmas(timesteps: np.ndarray) -> np.ndarray:
    """sigma(t) = sqrt((1 - a_t) / a_t), linearly interpolated at (possibly fractional) t, float64."""
    sigmas = np.sqrt((1.0 - ALPHAS_CUMPROD) / ALPHAS_CUMPROD)
    return np.interp(timesteps.astype(np.float64), np.arange(NUM_TRAIN_TIMESTEPS), sigmas)


class DPMSolverPP2MScheduler(Scheduler):
    """DPM-Solver++(2M), equal to diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_order=2, SD config, timestep_spacing="linspace", lower_order_final=True)."""

    name = "dpmpp_2m"

    def __init__(self, steps: int) -> None:
        ts = np.linspace(0, NUM_TRAIN_TIMESTEPS - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
        super().__init__(ts.copy())
        self._sigmas = [float(s) for s in _interp_sigmas(ts)] + [0.0]
        self._x0_prev: Any = None

    def step(self, x: X, i: int, eps_fn: EpsFn) -> X:
        self._advance(i)
        sigma = self._sigmas[i]
        alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
        s = sigma * alpha
        e = eps_fn(x, float(self.timesteps[i]))
        x0 = (x - e * s) / alpha
        x0_prev, self._x0_prev = self._x0_prev, x0
        sigma_next = self._sigmas[i + 1]
        if sigma_next == 0.0:  # last step (final sigma 0): lambda_next = inf, the update is x0
            return x0
        alpha_next = 1.0 / math.sqrt(sigma_next * sigma_next + 1.0)
        s_next = sigma_next * alpha_next
        h = math.log(sigma) - math.log(sigma_next)  # lambda = -log(sigma)
        if x0_prev is None:  # first step: first order (DDIM)
            d = x0
        else:
            h_prev = math.log(self._sigmas[i - 1]) - math.log(sigma)
            d = x0 + (x0 - x0_prev) * (0.5 * h / h_prev)
        return x * (s_next / s) - d * (alpha_next * math.expm1(-h))

    def add_noise(self, x0: X, noise: X, i: int) -> X:
        sigma = self._sigmas[i]
        alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
        return x0 * alpha + noise * (sigma * alpha)


class EulerScheduler(Scheduler):
    """Euler, equal to diffusers' EulerDiscreteScheduler (SD config, timestep_spacing="linspace",
    interpolation_type="linear", final sigma 0, no churn), including scale_model_input."""

    name = "euler"

    def __init__(self, steps: int) -> None:
        # diffusers builds these in float32; keep its values, compute sigmas in float64
        ts = np.linspace(0, NUM_TRAIN_TIMESTEPS - 1, steps, dtype=np.float32)[::-1].astype(np.float64)
        sigmas = _interp_sigmas(ts)
        super().__init__(ts.copy(), init_noise_sigma=float(sigmas.max()))
        self._sigmas = [float(s) for s in sigmas] + [0.0]

    def step(self, x: X, i: int, eps_fn: EpsFn) -> X:
        self._advance(i)
        sigma = self._sigmas[i]
        e = eps_fn(x / math.sqrt(sigma * sigma + 1.0), float(self.timesteps[i]))
        return x + e * (self._sigmas[i + 1] - sigma)

    def add_noise(self, x0: X, noise: X, i: int) -> X:
        return x0 + noise * self._sigmas[i]


_CLASSES: dict[str, Callable[[int], Scheduler]] = {
    "plms": PLMSScheduler,
    "ddim": DDIMScheduler,
    "dpmpp_2m": DPMSolverPP2MScheduler,
    "euler": EulerScheduler,
}


def make_scheduler(name: str, steps: int) -> Scheduler:
    """A fresh sampler ``name`` (one of ``SCHEDULERS``) over ``steps`` steps (1..1000)."""
    if name not in _CLASSES:
        raise RequestError(f"unknown sampler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    if (
        isinstance(steps, bool)
        or not isinstance(steps, (int, np.integer))
        or not 1 <= steps <= NUM_TRAIN_TIMESTEPS
    ):
        raise RequestError(f"steps {steps!r} must be an integer in [1, {NUM_TRAIN_TIMESTEPS}]")
    return _CLASSES[name](int(steps))
