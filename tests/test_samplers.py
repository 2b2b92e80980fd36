"""Samplers against oracles with known posteriors, dense references and plain Python loops."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from didiff_jax import samplers
from didiff_jax.diffusion import ctmc
from didiff_jax.diffusion.schedules import CosineAbar, Geometric, LinearBetaAbar, LogLinear
from tests.test_ctmc import dense_cp_euler_step


def oracle_score_fn(posterior, x_t, sigma):
    """The exact log concrete score of the marginal of a known posterior ("images" = posterior)."""
    p_t = ctmc.uniform_marginal(posterior, sigma)  # [B, K]
    log_p = jnp.log(p_t)
    return log_p - jnp.take_along_axis(log_p, x_t[:, None], axis=-1)


def random_posteriors(K, B, seed=0, alpha=0.3):
    return jnp.asarray(np.random.default_rng(seed).dirichlet(np.full(K, alpha), size=B))


def l1(a, b):
    return float(jnp.max(jnp.sum(jnp.abs(a - b), axis=-1)))


# ---------------------------------------------------------------------------------------- CP


@pytest.mark.parametrize("K", [10, 1000])
@pytest.mark.parametrize("num_steps", [1, 2, 5, 16])
@pytest.mark.parametrize("mode", ["min", "max", "random"])
def test_cp_analytic_recovers_posterior(K, num_steps, mode):
    q = random_posteriors(K, 8, seed=K + num_steps)
    probs = samplers.cp_sample(
        oracle_score_fn,
        q,
        jax.random.key(0),
        num_classes=K,
        num_steps=num_steps,
        mode=mode,
        method="analytic",
    )
    assert probs.shape == (8, K)
    assert l1(probs, q) < 1e-3


def test_cp_analytic_geometric_schedule():
    # sigma_max = 8: at SEDD's 20 a float32 score cannot tell the marginal from uniform.
    q = random_posteriors(10, 4)
    probs = samplers.cp_sample(
        oracle_score_fn,
        q,
        jax.random.key(0),
        num_classes=10,
        num_steps=4,
        method="analytic",
        schedule=Geometric(1e-4, 8.0),
    )
    assert l1(probs, q) < 1e-3


@pytest.mark.parametrize("mode", ["min", "max"])
def test_cp_euler_equals_dense_reference_loop(mode):
    """Every step of the scan equals the reference's dense B x K x K loop (float64)."""
    K, B, S = 7, 5, 6
    q = np.random.default_rng(1).dirichlet(np.full(K, 0.5), size=B)
    sched = LogLinear()
    with jax.enable_x64(True):
        _, traj = samplers.cp_sample(
            oracle_score_fn,
            jnp.asarray(q),
            jax.random.key(0),
            num_classes=K,
            num_steps=S,
            mode=mode,
            return_trajectory=True,
        )
        ts = np.linspace(1.0, 1e-5, S)
        dt = (1.0 - 1e-5) / S
        p = np.full((B, K), 1.0 / K)
        for i, t in enumerate(ts):
            x = p.argmin(-1) if mode == "min" else p.argmax(-1)
            sigma = np.full(B, float(sched.sigma(t)))
            ls = np.asarray(oracle_score_fn(jnp.asarray(q), jnp.asarray(x), jnp.asarray(sigma)))
            p = dense_cp_euler_step(p, ls, np.full(B, dt * float(sched.dsigma(t))))
            np.testing.assert_allclose(np.asarray(traj[i]), p, rtol=1e-10, atol=1e-15)


def test_scan_equals_python_loop_analytic_and_random_mode():
    K, B, S = 6, 3, 4
    q = random_posteriors(K, B, seed=2, alpha=1.0)
    key = jax.random.key(3)
    sched = LogLinear()
    got = samplers.cp_sample(
        oracle_score_fn,
        q,
        key,
        num_classes=K,
        num_steps=S,
        mode="random",
        method="analytic",
        return_trajectory=True,
    )[1]
    ts, sigma_next = samplers.analytic_grid(sched, S)
    p = jnp.full((B, K), 1.0 / K)
    for i in range(S):
        key, k_x = jax.random.split(key)
        x = ctmc.sample_categorical(k_x, p)
        sigma = sched.sigma(ts[i])
        ls = oracle_score_fn(q, x, jnp.full((B,), sigma))
        p = ctmc.cp_analytic_step(p, ls, sigma - sigma_next[i])
        np.testing.assert_allclose(np.asarray(got[i]), np.asarray(p), rtol=1e-5, atol=1e-7)


def test_no_retrace_with_new_key_or_images():
    K = 10

    @jax.jit
    @chex.assert_max_traces(n=1)
    def sample(images, key):
        return samplers.cp_sample(oracle_score_fn, images, key, num_classes=K, num_steps=3)

    q = random_posteriors(K, 4)
    a = sample(q, jax.random.key(0))
    b = sample(random_posteriors(K, 4, seed=9), jax.random.key(1))
    assert a.shape == b.shape == (4, K)
    chex.clear_trace_counter()


# ---------------------------------------------------------------------------------------- CL


def test_cl_histogram_converges_with_chains():
    K, B = 10, 4
    q = random_posteriors(K, B, seed=4, alpha=1.0)
    errors = []
    for n in (10, 100, 1000, 10_000):
        probs = samplers.cl_sample(
            oracle_score_fn,
            q,
            jax.random.key(n),
            num_classes=K,
            num_steps=4,
            num_chains=n,
            method="analytic",
        )
        np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, rtol=1e-6)
        errors.append(float(jnp.mean(jnp.sum(jnp.abs(probs - q), -1))))
    assert errors[-1] < 0.06, errors
    assert errors[-1] < errors[0] / 5, errors


def test_cl_euler_scan_equals_python_loop():
    K, B, N, S = 5, 2, 3, 4
    q = random_posteriors(K, B, seed=6, alpha=1.0)
    key = jax.random.key(11)
    sched = LogLinear()
    got, traj = samplers.cl_sample(
        oracle_score_fn, q, key, num_classes=K, num_steps=S, num_chains=N, return_trajectory=True
    )
    key, k0 = jax.random.split(key)
    x = jax.random.randint(k0, (B * N,), 0, K)
    tiled = jnp.repeat(q, N, axis=0)
    ts, dt = samplers.euler_grid(S)
    for i, t in enumerate(ts):
        key, k_x = jax.random.split(key)
        sigma = sched.sigma(t)
        ls = oracle_score_fn(tiled, x, jnp.full((B * N,), sigma))
        x = ctmc.sample_categorical(k_x, ctmc.cl_euler_probs(x, ls, dt * sched.dsigma(t)))
        hist = jnp.mean(jax.nn.one_hot(x.reshape(B, N), K), axis=1)
        np.testing.assert_array_equal(np.asarray(traj[i]), np.asarray(hist))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(hist))


# ------------------------------------------------------------------------ shapes, pytrees, B = 1


def test_batch_size_one_and_pytree_images():
    K = 10
    q = random_posteriors(K, 1)
    images = {"posterior": q, "unused": jnp.zeros((1, 3, 3, 1))}

    def score_fn(images, x_t, sigma):
        return oracle_score_fn(images["posterior"], x_t, sigma)

    for method in ("euler", "analytic"):
        p = samplers.cp_sample(score_fn, images, jax.random.key(0), num_classes=K, method=method)
        assert p.shape == (1, K)
        p = samplers.cl_sample(score_fn, images, jax.random.key(0), num_classes=K, method=method)
        assert p.shape == (1, K)


def test_bad_options_fail_clearly():
    q = random_posteriors(4, 2)
    with pytest.raises(ValueError, match="mode"):
        samplers.cp_sample(oracle_score_fn, q, jax.random.key(0), num_classes=4, mode="argmin")
    with pytest.raises(ValueError, match="num_steps"):
        samplers.cp_sample(oracle_score_fn, q, jax.random.key(0), num_classes=4, num_steps=0)
    with pytest.raises(ValueError, match="score_fn returned shape"):
        samplers.cp_sample(oracle_score_fn, q, jax.random.key(0), num_classes=5)
    with pytest.raises(ValueError, match="null_cond"):
        samplers.onehot_sample(
            lambda y, t, c: c, q, jax.random.key(0), num_classes=4, guidance_scale=2.0
        )


# ------------------------------------------------------------------------------ Gaussian one-hot


def bayes_logits_fn(schedule):
    """Exact ``log p(y_0 = e_k | y_t)`` for a prior over classes given as ``cond`` [B, (N,) K]."""

    def logits_fn(y_t, t, prior):
        abar = schedule.abar(t).reshape((-1,) + (1,) * (y_t.ndim - 1))
        return jnp.log(prior) + jnp.sqrt(abar) / (1.0 - abar + 1e-12) * y_t

    return logits_fn


@pytest.mark.parametrize("schedule", [CosineAbar(), LinearBetaAbar(num_timesteps=1000)])
@pytest.mark.parametrize("num_steps", [1, 5, 20])
def test_onehot_argmax_returns_target(schedule, num_steps):
    K, B = 10, 16
    target = jnp.arange(B) % K
    prior = jax.nn.one_hot(target, K) * 0.999 + 0.001 / K
    probs, traj = samplers.onehot_sample(
        bayes_logits_fn(schedule),
        prior,
        jax.random.key(0),
        num_classes=K,
        num_steps=num_steps,
        schedule=schedule,
        return_trajectory=True,
    )
    assert traj.shape == (num_steps, B, K)
    np.testing.assert_array_equal(np.asarray(probs.argmax(-1)), np.asarray(target))


def test_onehot_sequences_and_eps_parameterization():
    V, B, N = 7, 3, 5
    schedule = CosineAbar()
    target = jnp.arange(B * N).reshape(B, N) % V
    prior = jax.nn.one_hot(target, V) * 0.99 + 0.01 / V
    probs = samplers.onehot_sample(
        bayes_logits_fn(schedule),
        prior,
        jax.random.key(1),
        num_classes=V,
        num_steps=4,
        seq_len=N,
        schedule=schedule,
    )
    assert probs.shape == (B, N, V)
    np.testing.assert_array_equal(np.asarray(probs.argmax(-1)), np.asarray(target))

    # A noise-predicting oracle: eps_hat from the true y_0.
    def eps_fn(y_t, t, y0):
        abar = schedule.abar(t)[:, None, None]
        return (y_t - jnp.sqrt(abar) * y0) / jnp.sqrt(1.0 - abar + 1e-12)

    probs = samplers.onehot_sample(
        eps_fn,
        jax.nn.one_hot(target, V),
        jax.random.key(2),
        num_classes=V,
        num_steps=3,
        seq_len=N,
        schedule=schedule,
        parameterization="eps",
    )
    np.testing.assert_array_equal(np.asarray(probs.argmax(-1)), np.asarray(target))


@pytest.mark.parametrize("to_one", ["argmax", "softmax", "multinomial"])
def test_guidance_scale_one_equals_no_guidance(to_one):
    K, B = 6, 4
    schedule = CosineAbar()
    prior = random_posteriors(K, B, seed=3, alpha=1.0)
    null = jnp.full((B, K), 1.0 / K)
    fn = bayes_logits_fn(schedule)
    kwargs = dict(
        num_classes=K, num_steps=5, schedule=schedule, to_one=to_one, return_trajectory=True
    )
    plain = samplers.onehot_sample(fn, prior, jax.random.key(4), **kwargs)
    guided = samplers.onehot_sample(
        fn, prior, jax.random.key(4), guidance_schedule=lambda t: 1.0, null_cond=null, **kwargs
    )
    np.testing.assert_allclose(np.asarray(guided[1]), np.asarray(plain[1]), rtol=1e-5, atol=1e-6)


def test_guidance_sharpens():
    """g > 1 extrapolates away from the null condition: the conditional mode gains mass."""
    K, B = 5, 8
    schedule = CosineAbar()
    prior = jnp.tile(jnp.array([[0.4, 0.3, 0.1, 0.1, 0.1]]), (B, 1))
    null = jnp.full((B, K), 1.0 / K)
    fn = bayes_logits_fn(schedule)
    p1 = samplers.onehot_sample(
        fn, prior, jax.random.key(0), num_classes=K, num_steps=1, schedule=schedule
    )
    p3 = samplers.onehot_sample(
        fn,
        prior,
        jax.random.key(0),
        num_classes=K,
        num_steps=1,
        schedule=schedule,
        guidance_scale=3.0,
        null_cond=null,
    )
    assert float(p3[:, 0].mean()) > float(p1[:, 0].mean())
    p_lin = samplers.onehot_sample(
        fn,
        prior,
        jax.random.key(0),
        num_classes=K,
        num_steps=3,
        schedule=schedule,
        guidance_scale=3.0,
        guidance_schedule="linear",
        null_cond=null,
    )
    assert p_lin.shape == (B, K)


# ------------------------------------------------------------------------------------- masked


def test_masked_sample_reveals_targets_monotonically():
    V, B, N, S = 9, 4, 6, 5
    target = (jnp.arange(B * N).reshape(B, N) * 5) % V

    def logits_fn(x_t, t, tgt):
        assert x_t.shape == (B, N)
        return 20.0 * jax.nn.one_hot(tgt, V)

    tokens, probs, traj = samplers.masked_sample(
        logits_fn,
        target,
        jax.random.key(0),
        num_classes=V,
        num_steps=S,
        seq_len=N,
        return_trajectory=True,
    )
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(target))
    assert probs.shape == (B, N, V)
    masked_count = np.asarray((traj == V).sum(axis=(1, 2)))
    assert np.all(np.diff(masked_count) <= 0) and masked_count[-1] == 0
    # Revealed tokens never change.
    t_np = np.asarray(traj)
    for i in range(1, S):
        was = t_np[i - 1] != V
        np.testing.assert_array_equal(t_np[i][was], t_np[i - 1][was])


def test_masked_sample_reveal_rate_single_token():
    """Linear schedule, 2 steps: half of the tokens are revealed at the first step."""
    V, B = 3, 20_000
    cond = jnp.zeros((B,), jnp.int32)
    _, _, traj = samplers.masked_sample(
        lambda x, t, c: jnp.zeros((B, V)),
        cond,
        jax.random.key(1),
        num_classes=V,
        num_steps=2,
        return_trajectory=True,
    )
    frac = float(jnp.mean(traj[0] != V))
    assert abs(frac - 0.5) < 0.02
    assert int(jnp.sum(traj[1] == V)) == 0


def _oracle_add_model(K: int, lam: float, regression: bool, schedule):
    """A stand-in ADD network whose image *is* its label: ``encode`` returns the one-hot label, and
    ``denoise`` returns what a perfect network of the objective would (the true noise for
    ``regression``, sharp logits of the label otherwise)."""
    from flax import nnx

    class Oracle(nnx.Module):
        def __init__(self):
            self.unused = nnx.Param(jnp.zeros(()))  # a parameter, so that split gives a state

        def encode(self, images, train=False):
            return images  # [B, K] one-hot labels

        def null_condition(self, B):
            return jnp.zeros((B, K))

        def denoise(self, y, t, c, train=False):
            abar = schedule.abar(t)[:, None]
            eps = (y - jnp.sqrt(abar) * lam * c) / jnp.sqrt(1.0 - abar)  # [B, K]
            return eps if regression else 30.0 * c

    return Oracle()


@pytest.mark.parametrize("loss", ["cross_entropy", "regression"])
def test_evaluate_decodes_add_output_as_trained(loss):
    """The evaluation sweep samples ADD with the objective's lambda-hot scale and parameterisation:
    an oracle noise predictor (``loss=regression``, lam = 3) recovers every label. Reading its
    noise prediction as logits of ``y_0`` (the old behaviour) does not."""
    import ml_collections
    from flax import nnx

    from didiff_jax import inference
    from didiff_jax.losses import gaussian_schedule

    K, lam = 10, 3.0
    cfg = ml_collections.ConfigDict(
        dict(objective=dict(name="add", loss=loss, lambda_hot=lam, schedule="cosine"))
    )
    model = _oracle_add_model(K, lam, loss == "regression", gaussian_schedule(cfg.objective))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    labels = jnp.arange(32) % K
    entry = ml_collections.ConfigDict(dict(name="onehot", to_one="argmax"))
    fn = inference.jit_outputs(
        inference.make_predict_fn(cfg, graphdef, entry, 4, K), "probs", "traj"
    )
    probs, traj = fn(params, rest, jax.nn.one_hot(labels, K), jax.random.key(0))
    assert traj.shape == (4, 32, K)
    np.testing.assert_array_equal(np.argmax(probs, -1), np.asarray(labels))
    if loss == "regression":  # the same run decoded as x0 logits is near chance
        wrong = samplers.onehot_sample(
            lambda y, t, c: model.denoise(y, t, c), jax.nn.one_hot(labels, K), jax.random.key(0),
            num_classes=K, num_steps=4, lam=lam, schedule=gaussian_schedule(cfg.objective),
        )  # fmt: skip
        assert np.mean(np.argmax(wrong, -1) == np.asarray(labels)) < 0.5
