"""Noise schedules of the three label-space processes.

* CTMC (DiDiCM, SPEC 1.1): total noise ``sigma(t)`` and its rate ``dsigma(t)``; the network is
  conditioned on ``sigma``, the losses are weighted by ``dsigma``.
* Gaussian one-hot (ADD/TDD, SPEC 2): the signal level ``abar(t)``, continuous ``t in [0, 1]`` or
  snapped to a grid of ``T`` steps (``t = i / T``).
* Masked / absorbing (MDD baseline): the keep probability ``alpha(t)`` and ``dalpha(t)``.

All schedules are frozen dataclasses: hashable, so they can be static arguments of ``jax.jit``, and
their methods are plain ``jax.numpy`` functions of ``t`` (any shape).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

# Training draws t ~ U[T_EPS, 1] and the reference sampling grid ends at T_EPS [ref].
T_EPS = 1e-5


def sample_t(
    key: jax.Array, shape: tuple[int, ...], eps_t: float = T_EPS, *, stratified: bool = False
) -> jax.Array:
    """Training times ``t ~ U[eps_t, 1]`` (one per example in [ref]).

    ``stratified``: the ``n = prod(shape)`` times share one uniform offset ``u`` and sit at
    ``(u + i / n) mod 1`` (the low-discrepancy sampler of VDM, Kingma et al. 2021): each time is
    still marginally ``U[eps_t, 1]``, so the loss is unbiased, but a batch covers ``[eps_t, 1]``
    evenly and the variance of the batch loss over t drops (it no longer depends on how many draws
    happen to land near t = 1, where the ``dsigma`` weight is largest).
    """
    if not stratified:
        return jax.random.uniform(key, shape, minval=eps_t, maxval=1.0)
    n = math.prod(shape)
    u = jax.random.uniform(key, ())
    grid = jnp.mod(u + jnp.arange(n) / n, 1.0)  # [n], each entry ~ U[0, 1)
    return (eps_t + (1.0 - eps_t) * grid).reshape(shape)


# ----------------------------------------------------------------------------- CTMC schedules


@dataclasses.dataclass(frozen=True)
class LogLinear:
    """Log-linear schedule [ref default]: ``e^{-sigma(t)} = 1 - (1 - eps) t``.

    ``sigma(1) = -log(eps)`` (ln 1000 for eps = 1e-3), so at t = 1 the label keeps its value with
    probability eps only; ``dsigma(t) = (1 - eps) / (1 - (1 - eps) t)``.
    """

    eps: float = 1e-3

    def sigma(self, t: jax.Array) -> jax.Array:
        # Two algebraically equal forms: log1p is accurate near t = 0, the other is exactly
        # -log(eps) at t = 1 (float32 rounds 1 - 0.999 otherwise).
        t = jnp.asarray(t)
        near_one = -jnp.log(self.eps + (1.0 - self.eps) * (1.0 - t))
        return jnp.where(t > 0.5, near_one, -jnp.log1p(-(1.0 - self.eps) * t))

    def dsigma(self, t: jax.Array) -> jax.Array:
        return (1.0 - self.eps) / (self.eps + (1.0 - self.eps) * (1.0 - jnp.asarray(t)))


@dataclasses.dataclass(frozen=True)
class Geometric:
    """Geometric schedule (SEDD form): ``sigma(t) = sigma_min^{1-t} sigma_max^t``.

    The DiDiCM paper writes the rate as ``a b^t log b``; its integral is this schedule up to the
    constant ``sigma_min`` at t = 0.
    """

    sigma_min: float = 1e-4
    sigma_max: float = 20.0

    def sigma(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t)
        return self.sigma_min ** (1.0 - t) * self.sigma_max**t

    def dsigma(self, t: jax.Array) -> jax.Array:
        return self.sigma(t) * math.log(self.sigma_max / self.sigma_min)


CTMCSchedule = LogLinear | Geometric


# ------------------------------------------------------------------- Gaussian one-hot schedules


def _snap(t: jax.Array, num_timesteps: int | None) -> jax.Array:
    """Round continuous t to the grid i / T (identity when T is None)."""
    t = jnp.asarray(t)
    if num_timesteps is None:
        return t
    return jnp.round(t * num_timesteps) / num_timesteps


@dataclasses.dataclass(frozen=True)
class CosineAbar:
    """Cosine schedule (Nichol & Dhariwal): ``abar(t) = cos^2(pi/2 (t+s)/(1+s)) / cos^2(pi/2 s/(1+s))``.

    ``num_timesteps``: if set, t is snapped to ``i / T`` (the discrete-time DDPM view, t in {0..T}).
    ``abar`` is floored at ``min_abar`` so that ``abar(1)`` is not exactly 0.
    """

    s: float = 0.008
    num_timesteps: int | None = None
    min_abar: float = 1e-6

    def abar(self, t: jax.Array) -> jax.Array:
        t = _snap(t, self.num_timesteps)
        f = jnp.cos(0.5 * jnp.pi * (t + self.s) / (1.0 + self.s)) ** 2
        f0 = math.cos(0.5 * math.pi * self.s / (1.0 + self.s)) ** 2
        return jnp.clip(f / f0, self.min_abar, 1.0)

    def sample_t(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return _sample_gaussian_t(key, shape, self.num_timesteps)


@dataclasses.dataclass(frozen=True)
class LinearBetaAbar:
    """Linear-beta schedule (DDPM / VP-SDE).

    Continuous (``num_timesteps=None``): ``beta(t) = beta_min + t (beta_max - beta_min)`` and
    ``abar(t) = exp(-int_0^t beta)``. Discrete (``num_timesteps=T``): DDPM's
    ``betas = linspace(beta_min, beta_max, T) / T`` (with the defaults, DDPM's 1e-4 .. 0.02 at T = 1000)
    and ``abar_i = prod_{j <= i} (1 - beta_j)``; t is snapped to ``i / T``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    num_timesteps: int | None = None

    def abar(self, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t)
        if self.num_timesteps is None:
            return jnp.exp(-(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2))
        T = self.num_timesteps
        betas = jnp.linspace(self.beta_min, self.beta_max, T) / T  # [T]
        table = jnp.concatenate([jnp.ones(1), jnp.cumprod(1.0 - betas)])  # [T + 1], abar_0 = 1
        index = jnp.clip(jnp.round(t * T).astype(jnp.int32), 0, T)
        return table[index].astype(jnp.result_type(float))

    def sample_t(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return _sample_gaussian_t(key, shape, self.num_timesteps)


def _sample_gaussian_t(key: jax.Array, shape: tuple[int, ...], T: int | None) -> jax.Array:
    """t ~ U(0, 1] (continuous) or t = i / T with i ~ U{1..T} (discrete, as in the ADD paper)."""
    if T is None:
        return jax.random.uniform(key, shape, minval=T_EPS, maxval=1.0)
    return jax.random.randint(key, shape, 1, T + 1).astype(jnp.result_type(float)) / T


GaussianSchedule = CosineAbar | LinearBetaAbar


# ---------------------------------------------------------------------------- masked schedules


@dataclasses.dataclass(frozen=True)
class MaskLinear:
    """Absorbing-state schedule ``alpha(t) = 1 - t``: a token is unmasked with probability alpha."""

    def alpha(self, t: jax.Array) -> jax.Array:
        return 1.0 - jnp.asarray(t)

    def dalpha(self, t: jax.Array) -> jax.Array:
        return -jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))


@dataclasses.dataclass(frozen=True)
class MaskCosine:
    """Absorbing-state schedule ``alpha(t) = 1 - cos(pi/2 (1 - t))`` (MD4's cosine)."""

    def alpha(self, t: jax.Array) -> jax.Array:
        return 1.0 - jnp.cos(0.5 * jnp.pi * (1.0 - jnp.asarray(t)))

    def dalpha(self, t: jax.Array) -> jax.Array:
        return -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * (1.0 - jnp.asarray(t)))


MaskSchedule = MaskLinear | MaskCosine
