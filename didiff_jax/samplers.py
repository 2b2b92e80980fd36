"""Reverse-chain samplers: each one ``jax.lax.scan`` over the time grid, so the whole chain compiles.

The samplers take the network as a plain function and know nothing of Flax:

* DiDiCM: ``score_fn(images, x_t, sigma) -> log_score [B, K]`` (``x_t`` int [B], ``sigma`` [B]).
* ADD/TDD and MDD: ``logits_fn(y_t, t, cond) -> logits`` (``t`` [B] in [0, 1]).

``images`` / ``cond`` may be any pytree whose leaves share a leading batch axis. ``num_steps`` and the
string options are Python values (static under ``jax.jit``); everything else may be traced. The
samplers are not jitted themselves; compile the chain once with, e.g.::

    sample = jax.jit(functools.partial(cp_sample, score_fn, num_classes=10, num_steps=8))
    probs = sample(images, key)        # a new key or new images of the same shape: no retrace

No sampler allocates a B x K x K tensor: the reverse-rate updates are O(K) per example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from didiff_jax.diffusion import ctmc, gaussian_onehot, masked
from didiff_jax.diffusion.schedules import (
    T_EPS,
    CosineAbar,
    CTMCSchedule,
    GaussianSchedule,
    LogLinear,
    MaskLinear,
    MaskSchedule,
)

ScoreFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
LogitsFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
GuidanceSchedule = str | Callable[[jax.Array], jax.Array] | None


# ------------------------------------------------------------------------------------ helpers


def _batch_size(tree: Any) -> int:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("images/cond must hold at least one array with a leading batch axis")
    return int(leaves[0].shape[0])


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int | np.integer) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive Python int (static), got {num_steps!r}")


def _checked(out: jax.Array, shape: tuple[int, ...], what: str) -> jax.Array:
    if out.shape != shape:
        raise ValueError(f"{what} returned shape {out.shape}, expected {shape}")
    return out.astype(jnp.result_type(float))


def euler_grid(num_steps: int, eps: float = T_EPS) -> tuple[np.ndarray, float]:
    """The reference grid: ``t_i = linspace(1, eps, S)`` and ``dt = (1 - eps) / S`` [ref]."""
    return np.linspace(1.0, eps, num_steps), (1.0 - eps) / num_steps


def analytic_grid(
    schedule: CTMCSchedule, num_steps: int, eps: float = T_EPS
) -> tuple[np.ndarray, jax.Array]:
    """SEDD's grid ``linspace(1, eps, S + 1)``: evaluation times ``t_0 .. t_{S-1}`` and the noise each
    step goes down to. The last step goes to sigma = 0 (SEDD's separate final denoise merged into
    it), so S steps cost S network evaluations.
    """
    ts = np.linspace(1.0, eps, num_steps + 1)
    sigma_next = schedule.sigma(jnp.asarray(ts[1:])).at[-1].set(0.0)
    return ts[:-1], sigma_next


def _maybe(traj: jax.Array, keep: bool) -> jax.Array | None:
    return traj if keep else None


# ------------------------------------------------------------------------------ DiDiCM samplers


def cp_sample(
    score_fn: ScoreFn,
    images: Any,
    key: jax.Array,
    *,
    num_classes: int,
    num_steps: int = 8,
    schedule: CTMCSchedule | None = None,
    mode: str = "min",
    method: str = "euler",
    return_trajectory: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """DiDiCM-CP: evolve the class-probability vector from uniform to the posterior (SPEC 1.5).

    Each step queries the network once at the label ``x = argmin p`` (``mode="min"`` [ref]),
    ``argmax p`` (``"max"``) or a draw from p (``"random"``), then updates p:
    ``method="euler"`` is the reference update on the grid ``linspace(1, 1e-5, S)``;
    ``method="analytic"`` is the Tweedie step on SEDD's grid with a final denoise to sigma = 0, which
    recovers the exact posterior from an exact score at any number of steps.

    Returns:
      probs [B, K]; with ``return_trajectory`` also the probabilities after every step [S, B, K].
    """
    _check_steps(num_steps)
    _check_choice("mode", mode, ("min", "max", "random"))
    _check_choice("method", method, ("euler", "analytic"))
    schedule = schedule or LogLinear()
    B, K = _batch_size(images), num_classes

    if method == "euler":
        ts, dt = euler_grid(num_steps)
        sigma_next = jnp.zeros(num_steps)  # unused
    else:
        ts, sigma_next = analytic_grid(schedule, num_steps)
        dt = 0.0

    def step(carry, inputs):
        p, key = carry
        t, s_next = inputs
        key, k_x = jax.random.split(key)
        if mode == "min":
            x = jnp.argmin(p, axis=-1)
        elif mode == "max":
            x = jnp.argmax(p, axis=-1)
        else:
            x = ctmc.sample_categorical(k_x, p)
        sigma = schedule.sigma(t)
        log_score = score_fn(images, x, jnp.full((B,), sigma))
        log_score = _checked(log_score, (B, K), "score_fn")
        if method == "euler":
            p = ctmc.cp_euler_step(p, log_score, dt * schedule.dsigma(t))
        else:
            p = ctmc.cp_analytic_step(p, log_score, sigma - s_next)
        return (p, key), _maybe(p, return_trajectory)

    p0 = jnp.full((B, K), 1.0 / K)
    (p, _), traj = jax.lax.scan(step, (p0, key), (jnp.asarray(ts), sigma_next))
    return (p, traj) if return_trajectory else p


def cl_sample(
    score_fn: ScoreFn,
    images: Any,
    key: jax.Array,
    *,
    num_classes: int,
    num_steps: int = 8,
    num_chains: int = 10,
    schedule: CTMCSchedule | None = None,
    method: str = "euler",
    return_trajectory: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """DiDiCM-CL: simulate ``num_chains`` label chains per image; predict their histogram.

    All chains run at once: the images are tiled into a batch of ``B * num_chains``, so one step is
    one network call. ``method="euler"`` is the reference jump process (grid as in CP);
    ``"analytic"`` draws each step from the Tweedie transition (SEDD's grid, final denoise).

    Returns:
      probs [B, K] (the histogram of final labels); with ``return_trajectory`` also the histogram
      after every step [S, B, K].
    """
    _check_steps(num_steps)
    _check_choice("method", method, ("euler", "analytic"))
    if num_chains < 1:
        raise ValueError(f"num_chains must be >= 1, got {num_chains}")
    schedule = schedule or LogLinear()
    B, K, N = _batch_size(images), num_classes, num_chains
    tiled = jax.tree.map(lambda a: jnp.repeat(a, N, axis=0), images)  # [B * N, ...]

    if method == "euler":
        ts, dt = euler_grid(num_steps)
        sigma_next = jnp.zeros(num_steps)
    else:
        ts, sigma_next = analytic_grid(schedule, num_steps)
        dt = 0.0

    def histogram(x):  # [B * N] -> [B, K]
        return jnp.mean(jax.nn.one_hot(x.reshape(B, N), K), axis=1)

    def step(carry, inputs):
        x, key = carry
        t, s_next = inputs
        key, k_x = jax.random.split(key)
        sigma = schedule.sigma(t)
        log_score = score_fn(tiled, x, jnp.full((B * N,), sigma))
        log_score = _checked(log_score, (B * N, K), "score_fn")
        if method == "euler":
            probs = ctmc.cl_euler_probs(x, log_score, dt * schedule.dsigma(t))
        else:
            probs = ctmc.tweedie_probs(x, log_score, sigma - s_next)
        x = ctmc.sample_categorical(k_x, probs)
        return (x, key), _maybe(histogram(x), return_trajectory)

    key, k0 = jax.random.split(key)
    x0 = jax.random.randint(k0, (B * N,), 0, K)
    (x, _), traj = jax.lax.scan(step, (x0, key), (jnp.asarray(ts), sigma_next))
    probs = histogram(x)
    return (probs, traj) if return_trajectory else probs


# ------------------------------------------------------------------------ ADD/TDD and MDD samplers


def guidance_scale_at(t: jax.Array, scale: float, schedule: GuidanceSchedule) -> jax.Array:
    """The per-step guidance scale ``g_t``: ``"constant"`` (or None) gives ``scale``; ``"linear"``
    grows from 1 at t = 1 to ``scale`` at t = 0 (MAR's schedule); a callable ``t -> g_t`` is used
    as given."""
    if schedule is None or schedule == "constant":
        return jnp.asarray(scale)
    if schedule == "linear":
        return 1.0 + (scale - 1.0) * (1.0 - t)
    if callable(schedule):
        return jnp.asarray(schedule(t))
    raise ValueError(
        f"guidance_schedule must be 'constant', 'linear' or a callable, got {schedule!r}"
    )


def _guided(
    logits_fn: LogitsFn,
    y: jax.Array,
    t: jax.Array,
    cond: Any,
    null_cond: Any,
    g: jax.Array | None,
) -> jax.Array:
    """``u + g (c - u)`` from one network call on the conditional and null halves (or just ``c``)."""
    if g is None:
        return logits_fn(y, t, cond)
    both = jax.tree.map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, null_cond)
    out = logits_fn(jnp.concatenate([y, y], axis=0), jnp.concatenate([t, t], axis=0), both)
    c, u = jnp.split(out, 2, axis=0)
    return u + g * (c - u)


def _guidance_setup(guidance_scale, guidance_schedule, null_cond, cond) -> bool:
    guided = guidance_scale != 1.0 or guidance_schedule not in (None, "constant")
    if guided and null_cond is None:
        raise ValueError(
            "classifier-free guidance needs null_cond: the null condition, shaped like cond "
            "(e.g. the model's learned null embedding broadcast to the batch)"
        )
    if guided and jax.tree.structure(null_cond) != jax.tree.structure(cond):
        raise ValueError("null_cond must have the same pytree structure as cond")
    return guided


def _time_grid(num_steps: int, num_timesteps: int | None) -> np.ndarray:
    """``linspace(1, 0, S + 1)``, snapped to ``i / T`` for discrete-time schedules."""
    ts = np.linspace(1.0, 0.0, num_steps + 1)
    return ts if num_timesteps is None else np.round(ts * num_timesteps) / num_timesteps


def onehot_sample(
    logits_fn: LogitsFn,
    cond: Any,
    key: jax.Array,
    *,
    num_classes: int,
    num_steps: int = 20,
    schedule: GaussianSchedule | None = None,
    to_one: str = "argmax",
    guidance_scale: float = 1.0,
    guidance_schedule: GuidanceSchedule = None,
    null_cond: Any = None,
    seq_len: int | None = None,
    lam: float = 1.0,
    parameterization: str = "x0",
    return_trajectory: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """ADD/TDD sampling: argmax-and-re-noise from ``y_1 ~ N(0, I)`` (SPEC 2).

    On the grid ``t_i = linspace(1, 0, S + 1)``: ``logits = f(y_t, t_i, c)`` (guided:
    ``u + g_t (c - u)`` with ``u = f(y_t, t_i, null_cond)``), ``y0_hat = to_one(logits)``, then
    ``y_{t_{i+1}} = sqrt(abar) y0_hat + sqrt(1 - abar) eps``. The last step lands at t = 0.

    Args:
      seq_len: None for single labels (``y`` is [B, K]); N for token sequences ([B, N, V]).
      lam: lambda-hot scale of the model's clean vectors.
      parameterization: ``"x0"`` (logits of ``p(y_0 | y_t)``) or ``"eps"`` (the regression
        ablation's noise prediction, turned into a clean estimate before ``to_one``).
    Returns:
      probs: softmax of the final (guided) logits, [B, K] or [B, N, V]; with ``return_trajectory``
      also the probabilities at every step [S, ...].
    """
    _check_steps(num_steps)
    _check_choice("to_one", to_one, ("argmax", "softmax", "multinomial"))
    _check_choice("parameterization", parameterization, ("x0", "eps"))
    guided = _guidance_setup(guidance_scale, guidance_schedule, null_cond, cond)
    schedule = schedule or CosineAbar()
    B = _batch_size(cond)
    shape = (B, num_classes) if seq_len is None else (B, seq_len, num_classes)
    ts = _time_grid(num_steps, schedule.num_timesteps)

    def step(carry, inputs):
        y, _, key = carry
        t, t_next = inputs
        key, k_one, k_eps = jax.random.split(key, 3)
        g = guidance_scale_at(t, guidance_scale, guidance_schedule) if guided else None
        out = _checked(
            _guided(logits_fn, y, jnp.full((B,), t), cond, null_cond, g), shape, "logits_fn"
        )
        logits = (
            out
            if parameterization == "x0"
            else gaussian_onehot.x0_from_eps(y, out, schedule.abar(t))
        )
        y0_hat = gaussian_onehot.to_one(k_one, logits, to_one, lam)
        abar_next = schedule.abar(t_next)
        y = gaussian_onehot.gaussian_onehot_forward(
            y0_hat, abar_next, jax.random.normal(k_eps, shape)
        )
        probs = jax.nn.softmax(logits, axis=-1)
        return (y, probs, key), _maybe(probs, return_trajectory)

    key, k0 = jax.random.split(key)
    y1 = jax.random.normal(k0, shape)
    init = (y1, jnp.zeros(shape), key)
    (_, probs, _), traj = jax.lax.scan(step, init, (jnp.asarray(ts[:-1]), jnp.asarray(ts[1:])))
    return (probs, traj) if return_trajectory else probs


def masked_sample(
    logits_fn: LogitsFn,
    cond: Any,
    key: jax.Array,
    *,
    num_classes: int,
    num_steps: int = 20,
    schedule: MaskSchedule | None = None,
    guidance_scale: float = 1.0,
    guidance_schedule: GuidanceSchedule = None,
    null_cond: Any = None,
    seq_len: int | None = None,
    return_trajectory: bool = False,
) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, jax.Array]:
    """MDD ancestral unmasking (the TDD paper's baseline), single tokens or sequences.

    Starts from all positions masked (``mask_id = num_classes``); on ``t_i = linspace(1, 0, S + 1)``
    every still-masked position is revealed with probability
    ``(alpha(t_{i+1}) - alpha(t_i)) / (1 - alpha(t_i))`` with a token drawn from the (guided)
    softmax; revealed tokens stay. At t = 0 every position is revealed.

    ``logits_fn(x_t, t, cond)`` gets int tokens in ``[0, V]`` and returns V logits per position.

    Returns:
      tokens int [B] or [B, N]; probs [B, (N,) V], the distribution each token was drawn from;
      with ``return_trajectory`` also the tokens after every step [S, B, (N)] (mask = V).
    """
    _check_steps(num_steps)
    guided = _guidance_setup(guidance_scale, guidance_schedule, null_cond, cond)
    schedule = schedule or MaskLinear()
    B, V = _batch_size(cond), num_classes
    shape = (B,) if seq_len is None else (B, seq_len)
    ts = np.linspace(1.0, 0.0, num_steps + 1)

    def step(carry, inputs):
        x, probs, key = carry
        t, t_next = inputs
        key, k_draw, k_reveal = jax.random.split(key, 3)
        g = guidance_scale_at(t, guidance_scale, guidance_schedule) if guided else None
        logits = _checked(
            _guided(logits_fn, x, jnp.full((B,), t), cond, null_cond, g), shape + (V,), "logits_fn"
        )
        draw = jax.random.categorical(k_draw, logits, axis=-1)
        reveal = jax.random.uniform(k_reveal, shape) < masked.unmask_probability(
            schedule, t, t_next
        )
        newly = (x == V) & reveal
        x = jnp.where(newly, draw, x)
        probs = jnp.where(newly[..., None], jax.nn.softmax(logits, axis=-1), probs)
        return (x, probs, key), _maybe(x, return_trajectory)

    init = (jnp.full(shape, V, jnp.int32), jnp.zeros(shape + (V,)), key)
    (x, probs, _), traj = jax.lax.scan(step, init, (jnp.asarray(ts[:-1]), jnp.asarray(ts[1:])))
    return (x, probs, traj) if return_trajectory else (x, probs)
