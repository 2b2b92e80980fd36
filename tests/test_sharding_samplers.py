"""Samplers on a batch sharded over the 8 fake devices give the single-device answer."""

import functools

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from didiff_jax import samplers
from tests.test_samplers import oracle_score_fn, random_posteriors


def test_sharded_batch_matches_single_device(devices):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    q = random_posteriors(10, 16, seed=7, alpha=1.0)
    q_sharded = jax.device_put(q, NamedSharding(mesh, PartitionSpec("data")))
    assert len(q_sharded.sharding.device_set) == 8
    for sampler in (
        functools.partial(samplers.cp_sample, method="analytic"),
        functools.partial(samplers.cl_sample, num_chains=4),
    ):
        fn = jax.jit(functools.partial(sampler, oracle_score_fn, num_classes=10, num_steps=4))
        want = fn(q, jax.random.key(0))
        got = fn(q_sharded, jax.random.key(0))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
