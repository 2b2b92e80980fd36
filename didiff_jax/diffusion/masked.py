"""Masked (absorbing-state) discrete diffusion: the MDD baseline of the TDD paper (MD4 form).

Each token is independently replaced by the mask token ``mask_id`` with probability
``1 - alpha(t)``. The network sees ``x_t`` (ints in ``[0, V]``, ``V = mask_id``) and returns ``V``
logits per position; the ELBO is the cross-entropy on masked positions weighted by
``-alpha'(t) / (1 - alpha(t))``. Single labels are sequences of length 1: every function takes
``x`` of shape ``[B]`` or ``[B, N]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from didiff_jax.diffusion.schedules import MaskSchedule


def _bcast(v: jax.Array, like: jax.Array) -> jax.Array:
    v = jnp.asarray(v)
    return v if v.ndim == 0 else jnp.reshape(v, v.shape + (1,) * (like.ndim - v.ndim))


def mask_corrupt(key: jax.Array, x_0: jax.Array, alpha: jax.Array, mask_id: int) -> jax.Array:
    """``x_t``: each token of ``x_0`` ([B] or [B, N]) masked with probability ``1 - alpha`` ([B])."""
    keep = jax.random.uniform(key, x_0.shape) < _bcast(alpha, x_0)
    return jnp.where(keep, x_0, jnp.asarray(mask_id, x_0.dtype))


def masked_weight(schedule: MaskSchedule, t: jax.Array) -> jax.Array:
    """``-alpha'(t) / (1 - alpha(t))`` (``1 / t`` for the linear schedule)."""
    return -schedule.dalpha(t) / (1.0 - schedule.alpha(t))


def masked_cross_entropy(
    logits: jax.Array,
    x_0: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    schedule: MaskSchedule,
    mask_id: int,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
    """The MDD loss per example ([B]): ``w(t) sum_{i: x_t,i = mask} -log p(x_0,i | x_t)``.

    Args:
      logits: [B, V] or [B, N, V]; x_0, x_t: int [B] or [B, N]; t: [B].
      mask: optional padding weights [B] or [B, N] (0 = ignore the position).
    """
    log_p = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_p, x_0[..., None], axis=-1)[..., 0]  # [B] or [B, N]
    w = (x_t == mask_id).astype(nll.dtype)
    if mask is not None:
        w = w * mask
    per_example = jnp.sum(jnp.reshape(nll * w, (nll.shape[0], -1)), axis=-1)  # [B]
    return masked_weight(schedule, t) * per_example


def unmask_probability(schedule: MaskSchedule, t: jax.Array, s: jax.Array) -> jax.Array:
    """Probability that a token masked at time ``t`` is revealed by time ``s < t``:
    ``(alpha(s) - alpha(t)) / (1 - alpha(t))``."""
    a_t, a_s = schedule.alpha(t), schedule.alpha(s)
    return (a_s - a_t) / (1.0 - a_t)
