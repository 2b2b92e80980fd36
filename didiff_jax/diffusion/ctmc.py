"""The uniform continuous-time Markov chain over K class labels (DiDiCM, SPEC 1.1-1.3, 1.5).

Rate matrix ``Q = (1/K) 1 1^T - I`` [ref], so ``exp(sigma Q) = e^{-sigma} I + (1 - e^{-sigma})/K 1 1^T``.
Everything here is O(K) per example: no function builds a K x K matrix.

Shapes: ``B`` batch, ``K`` classes; ``sigma`` is ``[B]`` (or a scalar, broadcast).
A log-score is the network output read as ``log s_y = log p_t(y) - log p_t(x_t)`` (entry at
``x_t`` equal to 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _col(v: jax.Array) -> jax.Array:
    """[B] or scalar -> [B, 1] (or [1, 1]) for broadcasting against [B, K]."""
    return jnp.reshape(jnp.asarray(v), (-1, 1))


def log_expm1(x: jax.Array) -> jax.Array:
    """``log(e^x - 1)`` for x > 0, accurate for tiny x and without overflow for large x."""
    x = jnp.asarray(x)
    safe_large = jnp.maximum(x, 1.0)
    safe_small = jnp.minimum(x, 1.0)
    return jnp.where(
        x > 1.0, safe_large + jnp.log(-jnp.expm1(-safe_large)), jnp.log(jnp.expm1(safe_small))
    )


def phi(u: jax.Array) -> jax.Array:
    """``phi(u) = e^u - 1 - u >= 0``; a series for small |u| avoids the cancellation of expm1(u) - u."""
    small = jnp.abs(u) < 1e-3
    us = jnp.where(small, u, 0.0)
    series = 0.5 * us * us * (1.0 + us / 3.0 * (1.0 + us / 4.0))
    ul = jnp.where(small, 1.0, u)
    return jnp.where(small, series, jnp.expm1(ul) - ul)


# ----------------------------------------------------------------------------- forward process


def uniform_marginal(p_0: jax.Array, sigma: jax.Array) -> jax.Array:
    """``p_t = exp(sigma Q) p_0 = e^{-sigma} p_0 + (1 - e^{-sigma}) / K``.

    Args:
      p_0: [B, K] probabilities (a one-hot row for a hard label, soft rows for mixup/smoothing).
      sigma: [B] (or scalar) total noise.
    Returns:
      [B, K] marginal probabilities at noise level sigma.
    """
    K = p_0.shape[-1]
    sigma = _col(sigma)
    return jnp.exp(-sigma) * p_0 - jnp.expm1(-sigma) / K


def sample_uniform(key: jax.Array, x_0: jax.Array, sigma: jax.Array, num_classes: int) -> jax.Array:
    """Draw ``x_t ~ q(. | x_0)``: keep ``x_0`` with probability ``e^{-sigma}``, else a uniform label.

    The uniform draw ranges over all K classes (it may land on ``x_0``), which gives exactly the
    closed-form marginal. ``x_0``: int [B]; returns int [B].
    """
    k_move, k_draw = jax.random.split(key)
    sigma = jnp.broadcast_to(jnp.asarray(sigma), x_0.shape)
    move = jax.random.uniform(k_move, x_0.shape) < -jnp.expm1(-sigma)
    draw = jax.random.randint(k_draw, x_0.shape, 0, num_classes, dtype=x_0.dtype)
    return jnp.where(move, draw, x_0)


def sample_categorical(key: jax.Array, probs: jax.Array) -> jax.Array:
    """One draw per row of ``probs`` [..., K] (zero entries are never drawn). Returns int [...]."""
    return jax.random.categorical(key, jnp.log(probs), axis=-1)


# ---------------------------------------------------------------------------------- losses


def _entropy_terms(
    log_score: jax.Array,
    log_r: jax.Array,
    x_t: jax.Array,
    log_score_clip: float | None,
    r_positive: jax.Array | None = None,
) -> jax.Array:
    """``(1/K) sum_{y != x_t} r_y phi(s_y - log r_y)`` per example ([B]).

    This equals ``e^{s_y} - r_y s_y + r_y (log r_y - 1)`` summed, but is exactly 0 at
    ``s_y = log r_y`` and has no large cancelling terms. Where ``r_positive`` is False the ratio is 0
    and the term is its limit ``e^{s_y}``.
    """
    K = log_score.shape[-1]
    if log_score_clip is not None:
        log_score = jnp.clip(log_score, -log_score_clip, log_score_clip)
    off = jax.nn.one_hot(x_t, K, dtype=bool) == 0  # [B, K], True for y != x_t
    keep = off if r_positive is None else off & r_positive
    log_r = jnp.where(keep, log_r, 0.0)  # finite everywhere, so gradients through where stay finite
    terms = jnp.exp(log_r) * phi(log_score - log_r)  # [B, K]
    if r_positive is not None:
        terms = jnp.where(r_positive, terms, jnp.exp(log_score))
    return jnp.sum(jnp.where(off, terms, 0.0), axis=-1) / K


def log_rho(sigma: jax.Array, num_classes: int) -> jax.Array:
    """``log rho = log(expm1 sigma) - log(expm1 sigma + K)``: log of ``q(y | x_0) / q(x_0 | x_0)``, y != x_0."""
    lem = log_expm1(sigma)
    return lem - jnp.logaddexp(lem, jnp.log(float(num_classes)))


def log_score_from_x0_logits(logits: jax.Array, x_t: jax.Array, sigma: jax.Array) -> jax.Array:
    """The log concrete score implied by a denoiser ``q(x_0 | x_t) = softmax(logits)``.

    ``s_y = sum_{x_0} q(x_0) q_t(y | x_0) / q_t(x_t | x_0)``, exact when ``q`` is the true
    posterior of the clean label. With ``rho = expm1(sigma) / (expm1(sigma) + K)`` (``log_rho``),
    for ``y != x_t``:

        s_y = (1 - q(x_t)) + (1 / rho - 1) q(y) + rho q(x_t),

    computed as a log-sum-exp of the three terms. A network that outputs ``logits`` is a classifier
    conditioned on ``(x_t, sigma)``; this turns it into the score the losses and samplers take.

    Args:
      logits: [B, K] unnormalised log-probabilities of the clean label.
      x_t: int [B] current labels.
      sigma: [B] (or scalar) total noise.
    Returns:
      [B, K] log-score, exactly 0 at ``x_t``.
    """
    K = logits.shape[-1]
    log_q = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)
    at_xt = jax.nn.one_hot(x_t, K, dtype=bool)  # [B, K]
    log_q_xt = jnp.sum(jnp.where(at_xt, log_q, 0.0), axis=-1, keepdims=True)  # [B, 1]
    log_not_xt = jax.nn.logsumexp(jnp.where(at_xt, -jnp.inf, log_q), axis=-1, keepdims=True)
    lr = _col(log_rho(sigma, K))  # [B, 1]
    log_gain = jnp.log(float(K)) - _col(log_expm1(sigma))  # log(1 / rho - 1)
    terms = jnp.stack(
        [jnp.broadcast_to(log_not_xt, log_q.shape), log_gain + log_q,
         jnp.broadcast_to(lr + log_q_xt, log_q.shape)], axis=0,
    )  # fmt: skip
    return jnp.where(at_xt, 0.0, jax.nn.logsumexp(terms, axis=0))


def score_entropy(
    log_score: jax.Array,
    x_t: jax.Array,
    x_0: jax.Array,
    sigma: jax.Array,
    *,
    log_score_clip: float | None = None,
) -> jax.Array:
    """Denoising score entropy for hard labels (SEDD form, with its constant; minimum exactly 0).

    ``L = (1/K) sum_{y != x_t} [e^{s_y} - r_y s_y + r_y (log r_y - 1)]`` with
    ``r_y = q(y | x_0) / q(x_t | x_0)``: if ``x_t == x_0`` every ``r_y = rho``; otherwise
    ``r_{x_0} = 1 / rho`` and ``r_y = 1`` for the rest (SPEC 1.3). Not weighted by ``dsigma``.

    Args:
      log_score: [B, K] network output (the entry at x_t is ignored).
      x_t, x_0: int [B] noisy and clean labels.
      sigma: [B] total noise at which x_t was drawn.
      log_score_clip: optional symmetric clamp of the log-score (the reference clamps at 20 in the
        soft-label loss; useful against overflow at high learning rates).
    Returns:
      [B] loss per example.
    """
    K = log_score.shape[-1]
    lr = _col(log_rho(sigma, K))  # [B, 1]
    is_x0 = jax.nn.one_hot(x_0, K, dtype=bool)  # [B, K]
    same = (x_t == x_0)[:, None]  # [B, 1]
    log_r = jnp.where(same, lr, jnp.where(is_x0, -lr, 0.0))  # [B, K]
    return _entropy_terms(log_score, log_r, x_t, log_score_clip)


def soft_score_entropy(
    log_score: jax.Array,
    x_t: jax.Array,
    p_t: jax.Array,
    *,
    log_score_clip: float | None = None,
) -> jax.Array:
    """Score entropy for soft labels [ref "DiDiCMLoss"]: exact ratios ``r_y = p_t(y) / p_t(x_t)``.

    Args:
      log_score: [B, K]; x_t: int [B] drawn from ``p_t``; p_t: [B, K] marginal at the noise level
        (``uniform_marginal(p_0, sigma)``). Entries with ``p_t(y) = 0`` contribute ``e^{s_y}``.
    Returns:
      [B] loss per example (not weighted by dsigma).
    """
    positive = p_t > 0
    log_p = jnp.log(jnp.where(positive, p_t, 1.0))  # [B, K]
    log_p_xt = jnp.take_along_axis(log_p, x_t[:, None], axis=-1)  # [B, 1]
    return _entropy_terms(log_score, log_p - log_p_xt, x_t, log_score_clip, positive)


# ------------------------------------------------------------------------------ reverse steps


def cp_euler_step(p: jax.Array, log_score: jax.Array, rate: jax.Array) -> jax.Array:
    """One Euler step of the CP sampler [ref], in O(K) per example (SPEC 1.5).

    ``p <- p + rate / K * (p_hat * sum_j(p_j / p_hat_j) - p / p_hat)``, ``p_hat = softmax(log_score)``,
    then clip to [0, 1] and renormalise. ``rate = dt * dsigma(t)``. This is exactly the reference's
    dense update ``p + dt * Rbar p`` with ``Rbar = S*R - diag(1^T (S*R))``, ``S_ij = p_hat_i / p_hat_j``,
    ``R = dsigma Q``, without the B x K x K tensor.

    Args:
      p: [B, K] current class probabilities; log_score: [B, K]; rate: [B] or scalar.
    """
    K = p.shape[-1]
    log_p_hat = jax.nn.log_softmax(log_score, axis=-1)  # [B, K]
    p_hat = jnp.exp(log_p_hat)
    ratio = p * jnp.exp(-log_p_hat)  # [B, K], p / p_hat
    drift = (p_hat * jnp.sum(ratio, axis=-1, keepdims=True) - ratio) / K
    p = jnp.clip(p + _col(rate) * drift, 0.0, 1.0)
    return p / jnp.sum(p, axis=-1, keepdims=True)


def cl_euler_probs(x: jax.Array, log_score: jax.Array, rate: jax.Array) -> jax.Array:
    """Transition probabilities of one Euler step of the CL sampler [ref] ([B, K]).

    Jump rates ``rate * s_y / K`` to every ``y != x``; stay weight ``1 - sum`` (clamped at 0: a
    negative stay weight is never chosen); normalised.
    """
    K = log_score.shape[-1]
    stay = jax.nn.one_hot(x, K, dtype=bool)  # [B, K]
    jump = jnp.where(stay, 0.0, _col(rate) * jnp.exp(log_score) / K)  # [B, K]
    stay_w = jnp.maximum(1.0 - jnp.sum(jump, axis=-1, keepdims=True), 0.0)
    w = jnp.where(stay, stay_w, jump)
    return w / jnp.sum(w, axis=-1, keepdims=True)


def _denoised_marginal(p_hat: jax.Array, d: jax.Array) -> jax.Array:
    """``exp(-d Q) p_hat`` for a normalised p_hat, clamped at 0: ``p_hat + expm1(d) (p_hat - 1/K)``."""
    K = p_hat.shape[-1]
    return jnp.maximum(p_hat + jnp.expm1(_col(d)) * (p_hat - 1.0 / K), 0.0)


def tweedie_probs(x: jax.Array, log_score: jax.Array, d: jax.Array) -> jax.Array:
    """Analytic (Tweedie tau-leaping) transition ``p(x_{s} = y | x_t = x)``, ``d = sigma(t) - sigma(s)``.

    ``probs_y ~ [exp(-d Q) s]_y * exp(d Q)_{x, y}`` (SEDD); exact for a single variable given the
    true score. ``d = sigma(t)`` denoises to sigma = 0. Returns [B, K], normalised.
    """
    K = log_score.shape[-1]
    p_hat = jax.nn.softmax(log_score, axis=-1)
    stag = _denoised_marginal(p_hat, d)  # [B, K]
    e = jnp.exp(-_col(d))
    trans = e * jax.nn.one_hot(x, K, dtype=p_hat.dtype) + (1.0 - e) / K  # exp(dQ)_{x, .}
    return _normalise_or(stag * trans, p_hat)


def _normalise_or(w: jax.Array, fallback: jax.Array) -> jax.Array:
    """``w / sum(w)`` per row, or ``fallback`` where the row sums to 0 or is not finite.

    In float32 a score at very high noise (sigma >~ 15) cannot resolve the marginal from uniform,
    and ``exp(-dQ) s`` clamps to all zeros; such a step carries no information and is skipped.
    """
    total = jnp.sum(w, axis=-1, keepdims=True)
    ok = (total > 0) & jnp.isfinite(total)
    return jnp.where(ok, w / jnp.where(ok, total, 1.0), fallback)


def cp_analytic_step(p: jax.Array, log_score: jax.Array, d: jax.Array) -> jax.Array:
    """The Tweedie step applied to a class-probability vector (O(K) per example).

    ``p_new(y) = sum_x p(x) P(y | x)`` with ``P`` the Tweedie transition. Since the score at any one
    label gives the whole estimated marginal ``p_hat``, this is
    ``p_new ~ [exp(-dQ) p_hat]_y * (e^{-d} p_y / p_hat_y + (1 - e^{-d})/K sum_x p_x / p_hat_x)``;
    when ``p`` equals ``p_hat`` it is exactly the marginal at the lower noise level.
    """
    K = p.shape[-1]
    log_p_hat = jax.nn.log_softmax(log_score, axis=-1)
    stag = _denoised_marginal(jnp.exp(log_p_hat), d)
    ratio = p * jnp.exp(-log_p_hat)  # [B, K]
    e = jnp.exp(-_col(d))
    back = e * ratio + (1.0 - e) / K * jnp.sum(ratio, axis=-1, keepdims=True)
    return _normalise_or(stag * back, p)
