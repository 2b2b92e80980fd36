"""Run state: what a config builds and what a checkpoint holds.

* ``build_model``: the network of ``config.model``;
* ``total_steps`` / ``train_size``: the length of training;
* ``init_train_state``: the train state (a plain dict pytree: ``params``, ``rest`` = batch
  statistics, ``opt_state``, ``ema``, ``ema_rest``, ``step``, ``rng``, ``nonfinite``), its
  shardings and a jitted initialiser that builds it straight into them;
* ``restore_for_eval``: that state restored from a run directory (no data iterator), as the
  evaluators, the notebook API and the converter read it;
* ``host_params``: the (params, rest) to predict with (EMA when the run keeps one).

The loop (``train``), the evaluators and ``api`` all build on these, so a run is restored one way.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from didiff_jax import checkpoint, optim, sharding
from didiff_jax.data import pipeline
from didiff_jax.models import create_model


def build_model(config: ml_collections.ConfigDict, info: pipeline.DataInfo, rngs: nnx.Rngs
                ) -> nnx.Module:  # fmt: skip
    """The network of ``config.model`` (every key but ``name`` is a builder option)."""
    options = {k: v for k, v in config.model.items() if k != "name"}
    if "dtype" in options:
        options["dtype"] = jnp.dtype(options["dtype"])
    return create_model(config.model.name, num_classes=info.num_classes, rngs=rngs, **options)


def total_steps(config: ml_collections.ConfigDict, train_size: int) -> int:
    """``config.num_steps``, or ``num_epochs`` over ``train_size`` examples (0 = by epochs)."""
    if config.get("num_steps"):
        return int(config.num_steps)
    return int(math.ceil(config.num_epochs * train_size / config.batch_size))


def train_size(config: ml_collections.ConfigDict, source) -> int:
    """The number of training examples (``pipeline.training_indices``: without ``data.holdout``,
    and the class-balanced ``data.train_ratio`` subset)."""
    kept = pipeline.training_indices(config.data, source)
    return len(source) if kept is None else len(kept)


def init_train_state(config: ml_collections.ConfigDict, info: pipeline.DataInfo, tx, mesh, rules):
    """(graphdef, abstract state, state shardings, init function). The init function builds the
    model and optimizer state under ``jit`` straight into the target shardings (no host copy)."""

    def init():
        model = build_model(config, info, nnx.Rngs(config.seed))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        ema_on = bool(config.get("ema_decay", 0.0))
        state = {
            "params": params,
            "rest": rest,
            "opt_state": tx.init(params),
            "ema": params if ema_on else {},
            "ema_rest": rest if ema_on else {},  # EMA of the batch statistics (as timm's EMA)
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(config.seed + 1)),
            "nonfinite": jnp.zeros((), jnp.int32),
        }
        return graphdef, state

    graphdef, abstract = nnx.eval_shape(init)
    shardings = sharding.state_shardings(abstract, mesh, rules)
    init_fn = jax.jit(lambda: init()[1], out_shardings=shardings)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    return graphdef, abstract, shardings, init_fn


def restore_for_eval(config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None,
                     info: pipeline.DataInfo | None = None):  # fmt: skip
    """(graphdef, state, info, mesh) of the run's checkpoint (the newest intact one, or ``step``),
    without the data iterator."""
    info = pipeline.dataset_info(config.data) if info is None else info
    mesh = sharding.make_mesh(**config.mesh)
    tx, _ = optim.make_optimizer(config.optimizer, 1)  # the state layout does not depend on steps
    graphdef, abstract, _, _ = init_train_state(config, info, tx, mesh,
                                                sharding.parse_rules(config.get("sharding_rules")))  # fmt: skip
    mgr = checkpoint.manager(workdir, read_only=True)
    state = checkpoint.restore(
        mgr, abstract, step=step, describe=checkpoint.describe(config, workdir)
    )
    return graphdef, state, info, mesh


def host_params(state: dict, use_ema: bool) -> tuple[Any, Any]:
    """The (params, rest) to evaluate: the EMA of the parameters and of the batch statistics
    when the run keeps one and ``use_ema``. (EMA weights with the live model's batch statistics
    do not match: a ResNet on Fashion-MNIST then loses 17 points of top-1.)"""
    if use_ema and state["ema"]:
        return state["ema"], state["ema_rest"]
    return state["params"], state["rest"]


def hms(seconds: float) -> str:
    """``seconds`` as ``1h05m`` (an hour or more) or ``4m07s``, for progress lines."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s")  # fmt: skip
