"""The uniform CTMC: closed forms, losses and reverse steps against dense / brute-force references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from didiff_jax.diffusion import ctmc


def dense_Q(K):
    return np.ones((K, K)) / K - np.eye(K)


def random_simplex(rng, shape, alpha=0.5):
    return rng.dirichlet(np.full(shape[-1], alpha), size=shape[:-1])


def true_log_ratio(p_t, x_t):
    """log p_t(y) - log p_t(x_t): the exact log concrete score, [B, K]."""
    return np.log(p_t) - np.log(p_t[np.arange(len(x_t)), x_t])[:, None]


# ------------------------------------------------------------------------------ forward process


@pytest.mark.parametrize("K", [2, 3, 7, 16])
def test_marginal_equals_expm(K):
    rng = np.random.default_rng(K)
    sigma = np.array([1e-4, 0.3, 1.0, np.log(1000.0)])
    with jax.enable_x64(True):
        onehot = np.eye(K)[rng.integers(0, K, 4)]
        soft = random_simplex(rng, (4, K))
        for p_0 in (onehot, soft):
            got = np.asarray(ctmc.uniform_marginal(jnp.asarray(p_0), jnp.asarray(sigma)))
            want = np.stack(
                [scipy.linalg.expm(s * dense_Q(K)) @ p for s, p in zip(sigma, p_0, strict=True)]
            )
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_sample_uniform_matches_marginal():
    K, n = 5, 200_000
    x_0 = jnp.full((n,), 2)
    for sigma in (0.1, 1.0, 4.0):
        x_t = ctmc.sample_uniform(jax.random.key(0), x_0, jnp.full((n,), sigma), K)
        freq = np.bincount(np.asarray(x_t), minlength=K) / n
        want = np.asarray(ctmc.uniform_marginal(jax.nn.one_hot(x_0[:1], K), jnp.array([sigma])))[0]
        np.testing.assert_allclose(freq, want, atol=4e-3)


# ---------------------------------------------------------------------------------- losses


def brute_score_entropy(log_score, x_t, x_0, sigma, K):
    """SPEC 1.3 verbatim, with r from the dense transition matrix, in float64 numpy."""
    out = []
    for s, xt, x0, sg in zip(log_score, x_t, x_0, sigma, strict=True):
        P = scipy.linalg.expm(sg * dense_Q(K))  # P[y, x0] = q(y | x0)
        r = P[:, x0] / P[xt, x0]
        terms = np.exp(s) - r * s + r * (np.log(r) - 1.0)
        out.append(np.sum(np.delete(terms, xt)) / K)
    return np.array(out)


@pytest.mark.parametrize("K", [2, 10, 37])
def test_score_entropy_equals_brute_force(K):
    rng = np.random.default_rng(K)
    B = 64
    x_0 = rng.integers(0, K, B)
    x_t = np.where(rng.random(B) < 0.5, x_0, rng.integers(0, K, B))  # both cases
    sigma = np.exp(rng.uniform(np.log(1e-3), np.log(8.0), B))
    log_score = rng.normal(size=(B, K)) * 2.0
    with jax.enable_x64(True):
        got = ctmc.score_entropy(
            jnp.asarray(log_score), jnp.asarray(x_t), jnp.asarray(x_0), jnp.asarray(sigma)
        )
    np.testing.assert_allclose(
        np.asarray(got), brute_score_entropy(log_score, x_t, x_0, sigma, K), rtol=1e-10
    )


def exact_hard_log_score(x_t, x_0, sigma, K):
    """True log-ratios for hard labels in float64 (from the closed-form marginal)."""
    p_t = np.exp(-sigma)[:, None] * np.eye(K)[x_0] - np.expm1(-sigma)[:, None] / K
    return true_log_ratio(p_t, x_t)


@pytest.mark.parametrize("K", [2, 10, 1000])
def test_score_entropy_zero_at_true_ratios(K):
    rng = np.random.default_rng(0)
    B = 32
    x_0 = rng.integers(0, K, B)
    x_t = np.where(np.arange(B) % 2 == 0, x_0, (x_0 + 1) % K)
    sigma = np.exp(rng.uniform(np.log(1e-4), np.log(7.0), B))
    ls = exact_hard_log_score(x_t, x_0, sigma, K)
    with jax.enable_x64(True):
        got = ctmc.score_entropy(
            jnp.asarray(ls), jnp.asarray(x_t), jnp.asarray(x_0), jnp.asarray(sigma)
        )
    np.testing.assert_allclose(np.asarray(got), 0.0, atol=1e-12)
    # Away from the optimum it is strictly positive.
    with jax.enable_x64(True):
        off = ctmc.score_entropy(
            jnp.asarray(ls + 0.1), jnp.asarray(x_t), jnp.asarray(x_0), jnp.asarray(sigma)
        )
    assert np.all(np.asarray(off) > 0)


@pytest.mark.parametrize("K", [2, 10, 1000, 50_000])
def test_score_entropy_float32_finite_with_finite_gradients(K):
    rng = np.random.default_rng(1)
    sigma = np.geomspace(1e-6, np.log(1000.0), 12).astype(np.float32)
    B = len(sigma)
    x_0 = rng.integers(0, K, B)
    x_t = np.where(np.arange(B) % 2 == 0, x_0, (x_0 + 1) % K)
    for log_score in (np.zeros((B, K)), rng.normal(size=(B, K)) * 3.0):
        ls = jnp.asarray(log_score, jnp.float32)

        def total(ls):
            return jnp.sum(
                ctmc.score_entropy(ls, jnp.asarray(x_t), jnp.asarray(x_0), jnp.asarray(sigma))
            )

        value, grad = jax.value_and_grad(total)(ls)
        assert value.dtype == jnp.float32
        assert np.isfinite(float(value))
        assert np.all(np.isfinite(np.asarray(grad)))


def test_score_entropy_float32_small_sigma_large_K_is_zero_at_optimum():
    """K = 1000, sigma = 1e-5, exact log-ratios: float32 within 1e-4 of 0 (SPEC 1.3 numerics)."""
    K = 1000
    x_0 = np.array([3, 3, 500, 999])
    x_t = np.array([3, 7, 500, 0])
    sigma = np.full(4, 1e-5)
    ls = exact_hard_log_score(x_t, x_0, sigma, K)
    got = ctmc.score_entropy(
        jnp.asarray(ls, jnp.float32),
        jnp.asarray(x_t),
        jnp.asarray(x_0),
        jnp.asarray(sigma, jnp.float32),
    )
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), 0.0, atol=1e-4)

    # The reference's arithmetic (rho = 1 - K / (expm1(sigma) + K), terms summed as written) fails
    # here in float32: this is why the library evaluates r * phi(s - log r) instead.
    def reference_form(ls, x_t, x_0, sigma):
        ls, sigma = jnp.asarray(ls, jnp.float32), jnp.asarray(sigma, jnp.float32)[:, None]
        rho = 1.0 - K / (jnp.expm1(sigma) + K)
        is_x0 = jax.nn.one_hot(x_0, K, dtype=bool)
        r = jnp.where((x_t == x_0)[:, None], rho, jnp.where(is_x0, 1.0 / rho, 1.0))
        terms = jnp.exp(ls) - r * ls + r * (jnp.log(r) - 1.0)
        off = jax.nn.one_hot(x_t, K) == 0
        return jnp.sum(jnp.where(off, terms, 0.0), axis=-1) / K

    naive = np.asarray(reference_form(ls, x_t, x_0, sigma))
    assert not np.all(np.abs(naive) < 1e-4)


def brute_soft_score_entropy(log_score, x_t, p_t, K):
    out = []
    for s, xt, p in zip(log_score, x_t, p_t, strict=True):
        r = p / p[xt]
        with np.errstate(divide="ignore", invalid="ignore"):
            const = np.where(r > 0, r * (np.log(r) - 1.0), 0.0)
        terms = np.exp(s) - r * s + const
        out.append(np.sum(np.delete(terms, xt)) / K)
    return np.array(out)


def test_soft_score_entropy_brute_force_optimum_and_hard_case():
    rng = np.random.default_rng(3)
    K, B = 12, 48
    p_0 = random_simplex(rng, (B, K))
    sigma = np.exp(rng.uniform(np.log(1e-3), np.log(6.0), B))
    x_0 = rng.integers(0, K, B)
    x_t = rng.integers(0, K, B)
    log_score = rng.normal(size=(B, K))
    with jax.enable_x64(True):
        p_t = np.asarray(ctmc.uniform_marginal(jnp.asarray(p_0), jnp.asarray(sigma)))
        got = ctmc.soft_score_entropy(jnp.asarray(log_score), jnp.asarray(x_t), jnp.asarray(p_t))
        np.testing.assert_allclose(
            np.asarray(got), brute_soft_score_entropy(log_score, x_t, p_t, K), rtol=1e-10
        )
        at_opt = ctmc.soft_score_entropy(
            jnp.asarray(true_log_ratio(p_t, x_t)), jnp.asarray(x_t), jnp.asarray(p_t)
        )
        np.testing.assert_allclose(np.asarray(at_opt), 0.0, atol=1e-12)
        # Hard labels are the one-hot special case.
        p_t_hard = ctmc.uniform_marginal(
            jax.nn.one_hot(jnp.asarray(x_0), K, dtype=jnp.float64), jnp.asarray(sigma)
        )
        soft = ctmc.soft_score_entropy(jnp.asarray(log_score), jnp.asarray(x_t), p_t_hard)
        hard = ctmc.score_entropy(
            jnp.asarray(log_score), jnp.asarray(x_t), jnp.asarray(x_0), jnp.asarray(sigma)
        )
        np.testing.assert_allclose(np.asarray(soft), np.asarray(hard), rtol=1e-9)
        # A zero-probability class contributes its limit e^{s_y}.
        p_zero = p_t.copy()
        p_zero[:, 0] = 0.0
        p_zero /= p_zero.sum(-1, keepdims=True)
        xt_nz = np.where(x_t == 0, 1, x_t)
        got0 = ctmc.soft_score_entropy(
            jnp.asarray(log_score), jnp.asarray(xt_nz), jnp.asarray(p_zero)
        )
        np.testing.assert_allclose(
            np.asarray(got0), brute_soft_score_entropy(log_score, xt_nz, p_zero, K), rtol=1e-10
        )


# ------------------------------------------------------------------------------ reverse steps


def dense_cp_euler_step(p, log_score, rate):
    """SPEC 1.5 as the reference builds it: a B x K x K reverse-rate matrix per step."""
    K = p.shape[-1]
    s = np.exp(log_score)
    p_hat = s / s.sum(-1, keepdims=True)
    S = p_hat[:, :, None] / p_hat[:, None, :]  # S[b, i, j] = p_hat_i / p_hat_j
    M = S * dense_Q(K)[None]
    Rbar = M - np.eye(K)[None] * M.sum(axis=1)[:, None, :]  # minus diag(1^T (S * R))
    p = p + rate[:, None] * np.einsum("bij,bj->bi", Rbar, p)
    p = np.clip(p, 0.0, 1.0)
    return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("K", [2, 10, 50])
def test_cp_euler_step_equals_dense_update(K):
    rng = np.random.default_rng(K)
    B = 16
    p = random_simplex(rng, (B, K))
    log_score = rng.normal(size=(B, K)) * 1.5
    rate = rng.uniform(0.0, 2.0, B)  # large enough that some entries clip
    with jax.enable_x64(True):
        got = ctmc.cp_euler_step(jnp.asarray(p), jnp.asarray(log_score), jnp.asarray(rate))
    np.testing.assert_allclose(
        np.asarray(got), dense_cp_euler_step(p, log_score, rate), rtol=1e-10, atol=1e-15
    )


def test_tweedie_probs_equals_dense_and_is_exact():
    rng = np.random.default_rng(5)
    K, B = 9, 20
    p_0 = random_simplex(rng, (B, K))
    sigma_t = rng.uniform(0.5, 5.0, B)
    d = sigma_t * rng.uniform(0.1, 1.0, B)  # d == sigma_t is the final denoise
    d[0] = sigma_t[0]
    x = rng.integers(0, K, B)
    with jax.enable_x64(True):
        p_t = np.asarray(ctmc.uniform_marginal(jnp.asarray(p_0), jnp.asarray(sigma_t)))
        p_s = np.asarray(ctmc.uniform_marginal(jnp.asarray(p_0), jnp.asarray(sigma_t - d)))
        ls = true_log_ratio(p_t, x)
        got = np.asarray(ctmc.tweedie_probs(jnp.asarray(x), jnp.asarray(ls), jnp.asarray(d)))
        # Dense SEDD formula.
        for b in range(B):
            s = np.exp(ls[b])
            stag = np.maximum(scipy.linalg.expm(-d[b] * dense_Q(K)) @ s, 0.0)
            w = stag * scipy.linalg.expm(d[b] * dense_Q(K))[x[b]]
            np.testing.assert_allclose(got[b], w / w.sum(), rtol=1e-9, atol=1e-12)
            # Exact given the true score: Bayes' rule p(y | x) = p_s(y) q(x | y) / p_t(x).
            T = scipy.linalg.expm(d[b] * dense_Q(K))
            want = p_s[b] * T[x[b]] / p_t[b, x[b]]
            np.testing.assert_allclose(got[b], want, rtol=1e-8, atol=1e-12)
        # The analytic CP step maps the true marginal to the lower-noise one.
        step = np.asarray(ctmc.cp_analytic_step(jnp.asarray(p_t), jnp.asarray(ls), jnp.asarray(d)))
        np.testing.assert_allclose(step, p_s, rtol=1e-8, atol=1e-12)


def test_cl_euler_probs():
    K = 4
    x = jnp.array([0, 2])
    log_score = jnp.log(jnp.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]]))
    rate = jnp.array([0.4, 100.0])
    probs = np.asarray(ctmc.cl_euler_probs(x, log_score, rate))
    jump0 = 0.4 * np.array([0, 2, 3, 4]) / K
    np.testing.assert_allclose(probs[0], jump0 + np.array([1 - jump0.sum(), 0, 0, 0]), rtol=1e-6)
    # A negative stay weight is never chosen: the chain must move.
    assert probs[1, 2] == 0.0
    np.testing.assert_allclose(probs[1], [1 / 3, 1 / 3, 0, 1 / 3], rtol=1e-6)


@pytest.mark.parametrize("K", [2, 10, 100])
def test_log_score_from_the_exact_denoiser_is_the_exact_score(K):
    """With ``q(x_0 | x_t)`` the true posterior of a known ``p_0``, the closed form equals
    ``log p_t(y) - log p_t(x_t)`` computed from ``expm(sigma Q)`` by brute force."""
    rng = np.random.default_rng(K)
    B = 6
    p_0 = rng.dirichlet(np.full(K, 0.3), size=B)  # [B, K]
    x_t = rng.integers(0, K, size=B)
    sigma = np.array([1e-3, 0.05, 0.5, 2.0, 6.9, 15.0])
    for b in range(B):
        Q = np.ones((K, K)) / K - np.eye(K)
        T = scipy.linalg.expm(sigma[b] * Q)  # T[y, x_0] = q_t(y | x_0)
        p_t = T @ p_0[b]
        posterior = p_0[b] * T[x_t[b]] / p_t[x_t[b]]  # q(x_0 | x_t)
        with jax.enable_x64(True):
            got = ctmc.log_score_from_x0_logits(
                jnp.log(jnp.asarray(posterior))[None], jnp.asarray(x_t[b : b + 1]), sigma[b]
            )[0]
        want = np.log(p_t) - np.log(p_t[x_t[b]])
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-9)
        assert float(got[x_t[b]]) == 0.0


def test_log_score_from_x0_logits_float32_is_finite_with_finite_gradients():
    logits = jnp.array([[30.0, -30.0, 0.0], [-30.0, 30.0, 0.0]], jnp.float32)
    x_t, sigma = jnp.array([1, 0]), jnp.array([1e-5, 20.0], jnp.float32)
    out = ctmc.log_score_from_x0_logits(logits, x_t, sigma)
    grads = jax.grad(lambda z: ctmc.log_score_from_x0_logits(z, x_t, sigma).sum())(logits)
    assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(jnp.isfinite(grads)))
