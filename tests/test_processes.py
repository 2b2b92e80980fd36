"""Schedules, the Gaussian one-hot process and the masked process: closed forms and losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from didiff_jax import diffusion as D


@pytest.mark.parametrize(
    "schedule", [D.LogLinear(), D.LogLinear(eps=1e-2), D.Geometric(), D.Geometric(1e-3, 5.0)]
)
def test_ctmc_schedule_derivative(schedule):
    t = jnp.linspace(0.0, 1.0, 11)
    autodiff = jax.vmap(jax.grad(lambda t: schedule.sigma(t)))(t)
    np.testing.assert_allclose(np.asarray(schedule.dsigma(t)), np.asarray(autodiff), rtol=1e-5)


def test_loglinear_reference_values():
    s = D.LogLinear()
    np.testing.assert_allclose(float(s.sigma(1.0)), np.log(1000.0), rtol=1e-6)
    np.testing.assert_allclose(float(s.dsigma(1.0)), 999.0, rtol=1e-5)
    t = jnp.array([0.0, 0.3, 0.9])
    np.testing.assert_allclose(
        np.asarray(jnp.exp(-s.sigma(t))), 1.0 - 0.999 * np.asarray(t), rtol=1e-6
    )


def test_stratified_times_cover_each_stratum_once_and_are_marginally_uniform():
    n = 64
    t = np.asarray(D.sample_t(jax.random.key(3), (8, 8), stratified=True))
    assert t.shape == (8, 8) and t.min() >= D.T_EPS and t.max() < 1.0
    # One time in each of the n strata [eps + (1 - eps) i / n, eps + (1 - eps) (i + 1) / n).
    strata = np.floor((t.ravel() - D.T_EPS) / (1.0 - D.T_EPS) * n).astype(int)
    np.testing.assert_array_equal(np.sort(strata), np.arange(n))
    # Marginally U[eps, 1]: over many batches the first entry is uniform (mean 1/2, var 1/12).
    first = jax.vmap(lambda k: D.sample_t(k, (n,), stratified=True)[0])(
        jax.random.split(jax.random.key(4), 20_000)
    )
    assert abs(float(first.mean()) - 0.5) < 0.01 and abs(float(first.var()) - 1 / 12) < 0.005

    # The batch mean of a function of t varies far less than with i.i.d. draws
    def batch_means(stratified):
        keys = jax.random.split(jax.random.key(5), 2_000)
        return jax.vmap(lambda k: jnp.mean(D.sample_t(k, (n,), stratified=stratified) ** 3))(keys)

    # (the standard error falls as 1/n instead of 1/sqrt(n): ~1/8 of it at n = 64)
    assert float(batch_means(True).std()) < 0.25 * float(batch_means(False).std())


def test_gaussian_schedules():
    for sched in (D.CosineAbar(), D.LinearBetaAbar(), D.LinearBetaAbar(num_timesteps=1000)):
        abar = np.asarray(sched.abar(jnp.linspace(0.0, 1.0, 101)))
        assert abar[0] == pytest.approx(1.0, abs=1e-6)
        assert np.all(np.diff(abar) <= 1e-7) and abar[-1] < 1e-3
    # The discrete linear schedule is DDPM's table: betas = linspace(1e-4, 0.02, 1000).
    ddpm = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    got = D.LinearBetaAbar(num_timesteps=1000).abar(jnp.array([1, 10, 500, 1000]) / 1000)
    np.testing.assert_allclose(np.asarray(got), ddpm[[0, 9, 499, 999]], rtol=1e-5)
    # Discrete time draws lie on the grid i / T, i >= 1.
    t = np.asarray(D.CosineAbar(num_timesteps=50).sample_t(jax.random.key(0), (1000,)))
    np.testing.assert_allclose(t * 50, np.round(t * 50), atol=1e-5)
    assert t.min() >= 1 / 50 - 1e-7 and t.max() <= 1.0


def test_gaussian_forward_moments():
    K, n = 5, 100_000
    y_0 = D.lambda_hot(jnp.full((n,), 2), K, lam=0.8)
    abar = jnp.full((n,), 0.36)
    y_t = np.asarray(D.sample_gaussian_onehot(jax.random.key(0), y_0, abar))
    np.testing.assert_allclose(y_t.mean(0), 0.6 * 0.8 * np.eye(K)[2], atol=0.01)
    np.testing.assert_allclose(y_t.var(0), np.full(K, 0.64), rtol=0.02)


def test_weighted_cross_entropy_and_regression():
    K = 4
    logits = jnp.array([[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    targets = jax.nn.one_hot(jnp.array([0, 3]), K)
    abar = jnp.array([0.5, 0.25])
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.array([[0], [3]]), -1)[:, 0]
    np.testing.assert_allclose(
        np.asarray(D.weighted_cross_entropy(logits, targets, abar)),
        np.asarray(abar * nll),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(D.weighted_cross_entropy(logits, targets, abar, use_coefficient=False)),
        np.asarray(nll),
        rtol=1e-6,
    )
    # Sequences: summed over tokens, padding masked out.
    seq_logits = jnp.stack([logits, logits], axis=1)  # [2, 2, K]
    seq_t = jnp.stack([targets, targets], axis=1)
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    got = D.weighted_cross_entropy(seq_logits, seq_t, abar, mask=mask)
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(abar * nll * jnp.array([2.0, 1.0])), rtol=1e-6
    )
    eps = jax.random.normal(jax.random.key(0), (2, K))
    np.testing.assert_allclose(np.asarray(D.noise_regression_loss(eps, eps)), 0.0)
    np.testing.assert_allclose(np.asarray(D.noise_regression_loss(eps + 1.0, eps)), 1.0, rtol=1e-6)
    # x0_from_eps inverts the forward map.
    y0 = jax.nn.one_hot(jnp.array([1, 2]), K)
    y_t = D.gaussian_onehot_forward(y0, abar, eps)
    np.testing.assert_allclose(np.asarray(D.x0_from_eps(y_t, eps, abar)), np.asarray(y0), atol=1e-6)


def test_to_one_operations():
    logits = jnp.array([[0.1, 3.0, -1.0]])
    np.testing.assert_array_equal(
        np.asarray(D.to_one(jax.random.key(0), logits, "argmax")), [[0, 1, 0]]
    )
    np.testing.assert_allclose(
        np.asarray(D.to_one(jax.random.key(0), logits, "softmax", lam=0.5)),
        0.5 * np.asarray(jax.nn.softmax(logits)),
        rtol=1e-6,
    )
    draws = D.to_one(jax.random.key(1), jnp.tile(logits, (20_000, 1)), "multinomial")
    np.testing.assert_allclose(
        np.asarray(draws.mean(0)), np.asarray(jax.nn.softmax(logits)[0]), atol=0.01
    )
    with pytest.raises(ValueError, match="to_one"):
        D.to_one(jax.random.key(0), logits, "max")


@pytest.mark.parametrize("schedule", [D.MaskLinear(), D.MaskCosine()])
def test_mask_schedules_and_corruption(schedule):
    t = jnp.linspace(0.0, 1.0, 11)
    autodiff = jax.vmap(jax.grad(lambda t: schedule.alpha(t)))(t)
    np.testing.assert_allclose(
        np.asarray(schedule.dalpha(t)), np.asarray(autodiff), rtol=1e-5, atol=1e-6
    )
    assert float(schedule.alpha(0.0)) == pytest.approx(1.0) and float(
        schedule.alpha(1.0)
    ) == pytest.approx(0.0)
    x_0 = jnp.zeros((50_000, 4), jnp.int32)
    alpha = schedule.alpha(jnp.full((50_000,), 0.3))
    x_t = D.mask_corrupt(jax.random.key(0), x_0, alpha, mask_id=7)
    assert set(np.unique(np.asarray(x_t))) <= {0, 7}
    np.testing.assert_allclose(float(jnp.mean(x_t == 7)), 1.0 - float(alpha[0]), atol=0.01)


def test_masked_cross_entropy():
    V, mask_id = 5, 5
    logits = jax.random.normal(jax.random.key(0), (2, 3, V))
    x_0 = jnp.array([[1, 2, 3], [4, 0, 1]])
    x_t = jnp.array([[1, 5, 5], [5, 0, 1]])
    t = jnp.array([0.5, 0.25])
    got = D.masked_cross_entropy(logits, x_0, x_t, t, D.MaskLinear(), mask_id)
    nll = -np.take_along_axis(
        np.asarray(jax.nn.log_softmax(logits)), np.asarray(x_0)[..., None], -1
    )[..., 0]
    want = np.array([nll[0, 1] + nll[0, 2], nll[1, 0]]) / np.asarray(t)  # weight 1/t (linear)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    # Single tokens: [B] labels.
    single = D.masked_cross_entropy(
        logits[:, 0], x_0[:, 0], jnp.array([5, 4]), t, D.MaskLinear(), mask_id
    )
    np.testing.assert_allclose(np.asarray(single), [nll[0, 0] / 0.5, 0.0], rtol=1e-5)
