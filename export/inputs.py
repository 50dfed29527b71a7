"""Deterministic, valid random inputs for any engine spec: for tracing and the parity check.

Valid means what the runtime feeds: token ids below the vocabulary with BOS ... EOS and EOS padding,
boxes xyxy inside [0, 1] and zero in padded slots, masks exactly 0/1, condition maps in [-1, 1]
(sem: one-hot), latents ~ N(0, 1), images in [-1, 1], a timestep in [0, 1000), gate in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from gligen_rt.core.modality import NUM_KEYPOINTS, Modality
from gligen_rt.engines import spec as S

N_REAL = 3  # real objects / persons per image; the other slots are padding


def shape_point(spec: S.EngineSpec, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of every tensor of ``spec`` (batch/height/width clamped into the envelope)."""
    env = spec.envelope

    def clamp(r: S.Range | None, v: int) -> int:
        return v if r is None else min(max(v, r[0]), r[2])

    return S.concrete_shapes(
        spec, clamp(env.batch, batch), clamp(env.height, height), clamp(env.width, width)
    )


# Smallest image side checked: 128 px is a 2x2 map at the UNet's deepest level. At 64 px that level
# is 1x1 and its GroupNorms normalise 2 values each, which makes any model ill-conditioned there
# (a 5e-4 relative change of the tiny model's input moves its output by 1e-2): no precision can be
# judged at such a size.
MIN_CHECK_SIZE = 128


def _size_range(r: S.Range | None) -> S.Range:
    return r if r is not None else (MIN_CHECK_SIZE, MIN_CHECK_SIZE, MIN_CHECK_SIZE)


def _check_size(r: S.Range) -> int:
    """The smallest size of the range that is at least MIN_CHECK_SIZE (else the range's max)."""
    return min(max(r[0], MIN_CHECK_SIZE), r[2])


def parity_points(spec: S.EngineSpec) -> list[tuple[int, int, int]]:
    """Two (batch, height, width) points inside the envelope, both small (the check runs in PyTorch
    and ONNX Runtime on a CPU): the opt batch at a square size, and another batch (the minimum, or
    one more than opt where they agree) at a non-square size one step wider (catches swapped or
    frozen dynamic axes)."""
    env = spec.envelope
    b = env.batch or (1, 1, 1)
    h, w = _size_range(env.height), _size_range(env.width)
    h0, w0 = _check_size(h), _check_size(w)
    step = 64 if w0 + 64 <= w[2] else env.latent_factor
    w1 = w0 + step if w0 + step <= w[2] else w0
    b1 = b[0] if b[0] != b[1] else min(b[1] + 1, b[2])
    points = [(b[1], h0, w0), (b1, h0, w1)]
    return list(dict.fromkeys(points))


def trace_point(spec: S.EngineSpec) -> tuple[int, int, int]:
    """(batch, height, width) to trace the export at: batch 2 where allowed, the size of the first
    parity point. Sizes of 1 must be avoided: at 64 px the deepest UNet level is 1x1 and the dynamo
    exporter specialises dims of size 1 (batch 1 likewise invites the tracer to fold broadcasts)."""
    env = spec.envelope
    b = env.batch or (1, 1, 1)
    return (
        min(max(2, b[0]), b[2]),
        _check_size(_size_range(env.height)),
        _check_size(_size_range(env.width)),
    )


def make_inputs(
    spec: S.EngineSpec,
    config: Any,
    batch: int,
    height: int,
    width: int,
    seed: int = 0,
    gate: float = 1.0,
    timestep: float = 601.0,
) -> dict[str, np.ndarray]:
    """Named inputs of ``spec`` at one shape point, as numpy arrays of the spec's dtypes.

    Args:
        spec: the engine.
        config: the model's gligen_ref ModelConfig (vocabulary, modality).
        batch, height, width: the engine's batch and the image size in pixels (clamped into the
            envelope).
        seed: numpy Generator seed.
        gate: the UNet's per-step gate, timestep: its timestep (float, shape (1,)).
    """
    shapes = shape_point(spec, batch, height, width)
    rng = np.random.default_rng(seed)
    names = spec.input_names
    out: dict[str, np.ndarray] = {}
    masks: np.ndarray | None = None
    for name in names:
        shape = shapes[name]
        if name == "input_ids":
            out[name] = _token_ids(rng, shape, config.text)
        elif name == "boxes":
            masks = _slot_masks(shape[:2], N_REAL)
            xy0 = rng.uniform(0.0, 0.6, (*shape[:2], 2))
            xy1 = xy0 + rng.uniform(0.05, 0.4, (*shape[:2], 2))
            out[name] = np.concatenate([xy0, xy1], -1) * masks[..., None]
        elif name == "points":
            masks = _slot_masks(shape[:2], N_REAL * NUM_KEYPOINTS)
            out[name] = rng.uniform(0.0, 1.0, shape) * masks[..., None]
        elif name in ("masks", "text_masks", "image_masks"):
            if len(shape) == 2 and shape[1] == 1:  # spatial: one mask per image
                out[name] = np.ones(shape)
            else:
                out[name] = masks if masks is not None else _slot_masks(shape, N_REAL)
        elif name in ("phrase_embeddings", "image_embeddings"):
            m = masks if masks is not None else _slot_masks(shape[:2], N_REAL)
            out[name] = rng.standard_normal(shape) * m[..., None]
        elif name == "condition":
            out[name] = _condition(rng, shape, config.modality)
        elif name in ("timestep",):
            out[name] = np.full(shape, timestep)
        elif name == "gate":
            out[name] = np.full(shape, gate)
        elif name == "images":
            out[name] = rng.uniform(-1.0, 1.0, shape)
        elif name == "extra" and config.inpaint:
            out[name] = _inpaint_extra(rng, shape)
        else:  # sample, latents, context, tokens, pixel_values, spatial extra
            out[name] = rng.standard_normal(shape)
    return {k: v.astype(spec.tensor(k).dtype) for k, v in out.items()}


def _slot_masks(shape: tuple[int, ...], n_real: int) -> np.ndarray:
    m = np.zeros(shape)
    m[..., : min(n_real, shape[-1])] = 1.0
    return m


def _token_ids(rng: np.random.Generator, shape: tuple[int, ...], text: Any) -> np.ndarray:
    """[BOS] random words [EOS] pad... with EOS padding, lengths differing per row."""
    ids = np.full(shape, text.pad_token_id, dtype=np.int64)
    for row in ids:
        n = int(rng.integers(1, shape[1] - 1))
        row[0] = text.bos_token_id
        row[1 : n + 1] = rng.integers(0, min(text.bos_token_id, text.vocab_size - 2), n)
        row[n + 1] = text.eos_token_id
    return ids


def _condition(rng: np.random.Generator, shape: tuple[int, ...], modality: Modality) -> np.ndarray:
    b, c, h, w = shape
    if modality is Modality.SEM:
        labels = rng.integers(0, c, (b, h, w))
        return np.moveaxis(np.eye(c)[labels], -1, 1)
    return rng.uniform(-1.0, 1.0, shape)


def _inpaint_extra(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Masked clean latent (4 ch) + binary mask (1 ch): a box region is 0 in the mask."""
    b, c, h, w = shape
    mask = np.ones((b, 1, h, w))
    mask[:, :, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 0.0
    latent = rng.standard_normal((b, c - 1, h, w)) * mask
    return np.concatenate([latent, mask], 1)


def parity_cases(
    spec: S.EngineSpec, config: Any, seed: int = 0
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(label, inputs) for every parity point of ``spec``; the grounded UNet at gates 1.0, 0.5 and 0.0
    (spatial models switch to SD's conv_in at gate 0; gate-skip graphs take their If's else branch)."""
    gates: tuple[float, ...] = (1.0,)
    if "gate" in spec.input_names:
        gates = (1.0, 0.5, 0.0)
    for i, (b, h, w) in enumerate(parity_points(spec)):
        for gate in gates:
            label = f"b{b}_{h}x{w}" + (f"_gate{gate:g}" if len(gates) > 1 else "")
            yield label, make_inputs(spec, config, b, h, w, seed=seed + i, gate=gate)
