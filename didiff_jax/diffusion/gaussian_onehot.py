"""Gaussian diffusion on one-hot labels (ADD / TDD, SPEC 2).

Forward ``y_t = sqrt(abar_t) y_0 + sqrt(1 - abar_t) eps`` on one-hot (or lambda-hot) vectors; the
network predicts ``p(y_0 | y_t, c) = softmax(f(y_t, t, c))`` and is trained with the
abar-weighted ("timestep-conditioned") cross-entropy. Works on single labels ``[B, K]`` and on
token sequences ``[B, N, V]`` alike: all functions act on the last axis and reduce every axis but
the first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
    """[B] (or scalar) -> shape broadcastable against ``like`` [B, ...]."""
    v = jnp.asarray(v)
    if v.ndim == 0:
        return v
    return jnp.reshape(v, v.shape + (1,) * (like.ndim - v.ndim))


def _per_example_sum(x: jax.Array) -> jax.Array:
    """Sum over every axis but the batch axis: [B, ...] -> [B]."""
    return jnp.sum(jnp.reshape(x, (x.shape[0], -1)), axis=-1)


def lambda_hot(labels: jax.Array, num_classes: int, lam: float = 1.0) -> jax.Array:
    """``lam * onehot(labels)``: the ADD paper's lambda-hot variant (lam = 1 is plain one-hot)."""
    return lam * jax.nn.one_hot(labels, num_classes)


def gaussian_onehot_forward(y_0: jax.Array, abar: jax.Array, eps: jax.Array) -> jax.Array:
    """``y_t = sqrt(abar) y_0 + sqrt(1 - abar) eps`` (deterministic given the noise)."""
    abar = _bcast(abar, y_0)
    return jnp.sqrt(abar) * y_0 + jnp.sqrt(1.0 - abar) * eps


def sample_gaussian_onehot(key: jax.Array, y_0: jax.Array, abar: jax.Array) -> jax.Array:
    """Draw ``y_t ~ N(sqrt(abar) y_0, (1 - abar) I)``. ``y_0``: [B, K] or [B, N, V]; abar: [B]."""
    eps = jax.random.normal(key, y_0.shape, y_0.dtype)
    return gaussian_onehot_forward(y_0, abar, eps)


def weighted_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    abar: jax.Array,
    *,
    use_coefficient: bool = True,
    mask: jax.Array | None = None,
) -> jax.Array:
    """``-abar_t sum_k y_0k log softmax(logits)_k``, summed over tokens ([B]).

    Args:
      logits: [B, K] or [B, N, V]. targets: same shape, probabilities (one-hot, or soft after label
        smoothing; for lambda-hot inputs pass the one-hot class, not the scaled vector).
      abar: [B] signal level of each example.
      use_coefficient: weight by abar (the paper's default); False is the "no coefficient" ablation.
      mask: optional [B] or [B, N] weights for tokens (padding = 0).
    """
    nll = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)  # [B] or [B, N]
    if mask is not None:
        nll = nll * mask
    nll = _per_example_sum(nll)
    return abar * nll if use_coefficient else nll


def noise_regression_loss(
    eps_hat: jax.Array, eps: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """The regression ablation: predict the noise, mean squared error per example ([B]).

    Mean over the class axis, summed over tokens for sequences.
    """
    se = jnp.mean((eps_hat - eps) ** 2, axis=-1)  # [B] or [B, N]
    if mask is not None:
        se = se * mask
    return _per_example_sum(se)


def x0_from_eps(y_t: jax.Array, eps_hat: jax.Array, abar: jax.Array) -> jax.Array:
    """Invert the forward map for a noise-predicting network: ``(y_t - sqrt(1-abar) eps) / sqrt(abar)``."""
    abar = _bcast(abar, y_t)
    return (y_t - jnp.sqrt(1.0 - abar) * eps_hat) / jnp.sqrt(abar)


def to_one(key: jax.Array, logits: jax.Array, method: str, lam: float = 1.0) -> jax.Array:
    """The "to one" operation of the sampler: logits [..., K] -> a clean estimate ``y0_hat``.

    ``argmax``: one-hot of the argmax (the paper's default); ``softmax``: the probabilities;
    ``multinomial``: one-hot of a draw from the softmax. Scaled by ``lam`` for lambda-hot models.
    """
    K = logits.shape[-1]
    if method == "argmax":
        y = jax.nn.one_hot(jnp.argmax(logits, axis=-1), K, dtype=logits.dtype)
    elif method == "softmax":
        y = jax.nn.softmax(logits, axis=-1)
    elif method == "multinomial":
        y = jax.nn.one_hot(jax.random.categorical(key, logits, axis=-1), K, dtype=logits.dtype)
    else:
        raise ValueError(f"to_one must be 'argmax', 'softmax' or 'multinomial', got {method!r}")
    return lam * y
