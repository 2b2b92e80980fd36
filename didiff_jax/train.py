"""The training loop: ``train(config, workdir)``.

One straight line of named helpers, big_vision style:

1. data info, mesh, model (initialised directly into its shardings), optimizer;
2. the train state: a plain dict pytree (``params``, ``rest`` = batch statistics, ``opt_state``,
   ``ema``, ``ema_rest``, ``step``, ``rng``, ``nonfinite``), sharded by the config's rules;
3. resume from the workdir's latest checkpoint (train state and data-iterator position);
4. the jitted step (explicit in/out shardings, donated state); progress line, JSON-lines metrics;
   asynchronous checkpoints every ``checkpoint_every_steps``; SIGTERM saves and exits;
5. a final checkpoint. (``main.train_and_evaluate`` then evaluates the returned state.)

A step whose loss or gradient is not finite leaves the state unchanged and is counted; the loop
then stops with an error naming the last good checkpoint. A checkpoint is written only when the
state is healthy (finite, predicting finite outputs in inference mode, its loss not exploded; see
``didiff_jax.health``), so the last good checkpoint is one that predicts.

One training run per workdir: a second one fails at once (``checkpoint.workdir_lock``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.experimental import multihost_utils

from didiff_jax import checkpoint, health, losses, optim, preflight, sharding
from didiff_jax.data import pipeline
from didiff_jax.state import hms, init_train_state, total_steps, train_size

log = logging.getLogger("didiff_jax")


# ----------------------------------------------------------------------------------- the step


def make_train_step(graphdef, loss_fn, tx, ema_decay: float):
    def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

        model = nnx.merge(graphdef, state["params"], state["rest"])
        grad_fn = nnx.value_and_grad(lambda m: loss_fn(m, batch, key), has_aux=True)
        (loss, metrics), grads = grad_fn(model)  # grads: an nnx.State of the Params
        rest = nnx.state(model, nnx.Not(nnx.Param))  # updated batch statistics
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {**state, "params": params, "rest": rest, "opt_state": opt_state}
        if ema_decay:
            decay = optim.ema_decay_at(state["step"], ema_decay)
            new["ema"] = optim.ema_update(state["ema"], params, decay)
            new["ema_rest"] = optim.ema_update(state["ema_rest"], rest, decay)
        grad_norm = optax.tree.norm(grads)  # reported anyway: testing it costs nothing
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # Skip the update on a non-finite loss or gradient (a finite loss can come with NaN
        # gradients, which would turn every parameter into NaN): one branch, not a select over the
        # whole state (a pass over params and optimizer moments; ~3% of the DiDiRN-18 step on a
        # 2-core CPU).
        new = jax.lax.cond(finite, lambda: new, lambda: state)
        new["step"] = state["step"] + 1
        new["nonfinite"] = state["nonfinite"] + (~finite).astype(jnp.int32)
        metrics = {**metrics, "grad_norm": grad_norm}
        return new, metrics

    return train_step


# -------------------------------------------------------------------------------- logging


class Progress:
    """Progress line (process 0) and metrics as JSON lines in ``<workdir>/metrics.jsonl``; with
    ``tensorboard=True`` also TensorBoard event files in ``<workdir>/tensorboard`` (tensorboardX,
    no TensorFlow; imported only then)."""

    def __init__(self, workdir: str, total: int, batch_size: int, start: int,
                 tensorboard: bool = False):  # fmt: skip
        self.total, self.batch_size = total, batch_size
        self.t0, self.s0 = time.time(), start
        self.path = checkpoint.workdir_path(workdir) / "metrics.jsonl"  # gs:// too
        self.enabled = jax.process_index() == 0
        self.writer = tensorboard_writer(workdir) if tensorboard and self.enabled else None

    def __call__(self, step: int, metrics: dict[str, float], lr: float) -> None:
        if not self.enabled:
            return
        elapsed = max(time.time() - self.t0, 1e-9)
        rate = (step - self.s0) * self.batch_size / elapsed
        eta = (self.total - step) * self.batch_size / max(rate, 1e-9)
        record = {"step": step, "lr": lr, "examples_per_s": rate, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in {"lr": lr, "examples_per_s": rate, **metrics}.items():
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.flush()
        shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"step {step}/{self.total} | {shown} | {rate:,.0f} ex/s | ETA {hms(eta)}", flush=True)


def tensorboard_writer(workdir: str):
    """A tensorboardX ``SummaryWriter`` on ``<workdir>/tensorboard`` (the ``tensorboard`` extra)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise ImportError(
            "config.tensorboard=True needs tensorboardX: pip install -e '.[tensorboard]'"
        ) from e
    return SummaryWriter(str(checkpoint.workdir_path(workdir) / "tensorboard"))


class _Stop:
    """SIGTERM sets a flag; the loop saves a checkpoint at the next step and exits cleanly.

    With several processes, each would see the signal at its own step and save alone, out of step
    with the others' collectives. There JAX's preemption sync (which owns SIGTERM once
    ``jax.distributed`` is up) picks one step for all: ``poll`` turns the flag on at that step
    in every process, and they all save the same checkpoint."""

    def __init__(self):
        self.requested = False
        self.multi_process = jax.process_count() > 1
        if not self.multi_process:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint and stopping")
        self.requested = True

    def poll(self, step: int) -> None:
        """Every process calls this after every step (the preemption sync needs each step)."""
        if self.multi_process and not self.requested:
            self.requested = multihost_utils.reached_preemption_sync_point(step)
            if self.requested and jax.process_index() == 0:
                print(f"preemption notice: all processes save step {step} and stop", flush=True)

    def restore(self):
        if not self.multi_process:
            signal.signal(signal.SIGTERM, self._previous)


# ---------------------------------------------------------------------------------- the loop


def train(config: ml_collections.ConfigDict, workdir: str, *,
          lock: contextlib.ExitStack | None = None) -> dict[str, Any]:  # fmt: skip
    """Train (or resume) the run in ``workdir``; returns the final train state.

    The workdir is locked (``checkpoint.workdir_lock``) from the first write until ``train``
    returns, or until ``lock`` closes when given (``main.train_and_evaluate``: through the
    evaluation).
    A resumed run starts from the newest intact checkpoint (a damaged newer one is set aside with
    a warning). A checkpoint is written only when the state is healthy (:mod:`didiff_jax.health`);
    an unhealthy state that cannot recover stops the run with ``FloatingPointError`` naming the
    last good checkpoint."""
    preflight.check_config(config, mode="train", device_count=jax.device_count(),
                        process_count=jax.process_count())  # fmt: skip
    info = pipeline.dataset_info(config.data)
    mesh = sharding.make_mesh(**config.mesh)
    rules = sharding.parse_rules(config.get("sharding_rules"))
    source = pipeline.load_source(config.data, "train")
    steps = total_steps(config, train_size(config, source))
    tx, lr_fn = optim.make_optimizer(config.optimizer, steps)
    graphdef, abstract, state_shardings, init_fn = init_train_state(config, info, tx, mesh, rules)
    batch_sharding = sharding.batch_sharding(mesh)

    data = pipeline.train_dataset(config.data, info, global_batch_size=config.batch_size,
                                  seed=config.seed, source=source)  # fmt: skip
    data_iter = iter(data)
    with contextlib.ExitStack() as held:  # the workdir is this run's from its first write on
        (lock if lock is not None else held).enter_context(checkpoint.workdir_lock(workdir))
        mgr = checkpoint.manager(workdir, keep=config.get("keep_checkpoints", 2))
        resumed = mgr.latest_step() is not None
        resumed_from = None
        if resumed:
            state = checkpoint.restore(mgr, abstract, data_iter, set_aside=True,
                                       describe=checkpoint.describe(config, workdir))  # fmt: skip
            log.info("resumed from step %d", int(state["step"]))
            resumed_from = f"{mgr.directory}/{int(state['step'])}"
        else:
            state = init_fn()
        checkpoint.write_config(workdir, config)

        loss_fn = losses.make_objective(config.objective, info.num_classes)
        step_fn = jax.jit(
            make_train_step(graphdef, loss_fn, tx, config.get("ema_decay", 0.0)),
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=(state_shardings, None),
            donate_argnums=0,
        )
        start = int(state["step"])
        check = health.make_check(graphdef, loss_fn, config.eval.get("use_ema", True))
        check = jax.jit(check, in_shardings=(state_shardings, batch_sharding))
        guard = health.HealthCheck(check, last_good=start if resumed else None)
        progress = Progress(workdir, steps, config.batch_size, start,
                            config.get("tensorboard", False))  # fmt: skip
        log_every = config.get("log_every_steps", 50)
        ckpt_every = config.get("checkpoint_every_steps", 500)
        stop = _Stop()
        try:
            for step in range(start + 1, steps + 1):
                batch = pipeline.to_global(next(data_iter), batch_sharding)
                if step == start + 1:  # the state the run starts from
                    _check_start(guard, state, batch, resumed_from)
                state, metrics = step_fn(state, batch)
                stop.poll(step)
                log_now = step % log_every == 0 or step == steps or stop.requested
                save_now = step % ckpt_every == 0 or step == steps or stop.requested
                if (log_now or save_now) and int(state["nonfinite"]):
                    raise FloatingPointError(f"non-finite loss or gradients before step {step} "
                                             f"({guard.describe_last()}); {ADVICE}")  # fmt: skip
                if log_now:
                    logged = {k: float(v) for k, v in metrics.items()}
                    guard.record(logged.get("loss"))
                # The check (collectives over every device) before the progress line: once that
                # line is out, the next collectives are the save's barriers, where a dead process
                # is reported at once (a collective over several devices per process can instead
                # wait for the heartbeat timeout: test_distributed's dying-process test).
                problem = guard.problem(state, batch) if save_now else None
                if log_now:
                    progress(step, logged, float(lr_fn(step)))
                if save_now:
                    _save_if_healthy(mgr, guard, problem, step, state, data_iter,
                                     last=step == steps)  # fmt: skip
                if stop.requested:
                    break
        finally:
            mgr.wait_until_finished()
            stop.restore()
            if progress.writer is not None:
                progress.writer.close()
    return {"state": state, "graphdef": graphdef, "info": info, "mesh": mesh,
            "stopped_early": stop.requested}  # fmt: skip


ADVICE = "lower the learning rate or set objective.log_score_clip"


def _check_start(guard: health.HealthCheck, state: dict, batch: dict, resumed: str | None) -> None:
    """Run the health check once before the first step, on the state the run starts from: a
    resumed checkpoint (``resumed``: its directory) that is not finite or predicts NaN, as an
    earlier version could write, stops the run before training goes on from it. (The check also
    compiles here, with the train step, rather than at the first checkpoint.)"""
    problem = guard.problem(state, batch)
    if problem is None or problem[1]:
        return
    if resumed is None:
        raise FloatingPointError(f"the initial state is not healthy ({problem[0]})")
    raise FloatingPointError(f"checkpoint {resumed}, which the run resumes from, is not healthy "
                             f"({problem[0]}): move it away to resume from an earlier one; "
                             f"{ADVICE}")  # fmt: skip


def _save_if_healthy(mgr, guard: health.HealthCheck, problem: tuple[str, bool] | None, step: int,
                     state: dict, data_iter, *, last: bool) -> None:  # fmt: skip
    """Save the checkpoint of ``step`` if the state is healthy (``problem``: the verdict of
    ``guard.problem``). Otherwise write nothing and raise ``FloatingPointError`` (a state that
    cannot recover, or the last step), or warn in one line and let training go on (an exploded
    loss may come down again)."""
    if problem is None:
        checkpoint.save(mgr, step, state, data_iter, force=True)
        guard.last_good = step
        return
    what, recoverable = problem
    message = (f"step {step}: the train state is not healthy ({what}); its checkpoint is not "
               f"written ({guard.describe_last()})")  # fmt: skip
    if not recoverable or last:
        raise FloatingPointError(f"{message}; {ADVICE}")
    log.warning("%s; training goes on", message)
