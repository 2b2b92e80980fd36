"""Bad state and concurrent runs: healthy checkpoints, one run per workdir, damaged checkpoints.

* A checkpoint is written only when the train state is healthy (``didiff_jax.health``): a diverging
  run names as its last good checkpoint one that restores to finite values and predicts.
* A workdir is used by one training run at a time (``checkpoint.workdir_lock``), and a killed run
  leaves no lock behind.
* A damaged newest checkpoint: training resumes from the newest intact one (setting the damaged one
  aside) and evaluation uses it, each saying so in one line; with none intact, one line says what to
  do.
"""

import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import fashion_mnist_resnet
from didiff_jax import api, checkpoint, checks, health, train
from didiff_jax.data import fashion_mnist
from didiff_jax.state import restore_for_eval
from tests.test_train import tiny

REPO = pathlib.Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(
    not pathlib.Path(fashion_mnist.DEBIAN_DIR).is_dir()
    and "DIDIFF_FASHION_MNIST" not in os.environ,
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)


# ------------------------------------------------------------------ the health check, unit level


class Toy(nnx.Module):
    """Linear then BatchNorm: the smallest network with batch statistics."""

    def __init__(self, rngs: nnx.Rngs):
        self.lin = nnx.Linear(4, 3, rngs=rngs)
        self.bn = nnx.BatchNorm(3, momentum=0.9, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.bn(self.lin(x), use_running_average=not train)


def toy_loss(model, batch, key):
    logits = model(batch["x"], train=True)  # as the objectives call the network
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, {"loss": loss}


def toy_run():
    graphdef, params, rest = nnx.split(Toy(nnx.Rngs(0)), nnx.Param, ...)
    tx = optax.adam(1e-2)
    state = {"params": params, "rest": rest, "opt_state": tx.init(params), "ema": {},
             "ema_rest": {}, "step": jnp.ones((), jnp.int32),
             "rng": jax.random.key_data(jax.random.key(1)), "nonfinite": jnp.zeros((), jnp.int32)}  # fmt: skip
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, 3, 8), jnp.int32)}  # fmt: skip
    return graphdef, tx, state, batch


def with_leaf(state, group, name, value):
    """A copy of ``state`` with ``state[group]``'s leaf at path ending in ``name`` set to
    ``value`` (broadcast)."""

    def put(path, x):
        return jnp.full_like(x, value) if jax.tree_util.keystr(path).endswith(name) else x

    return {**state, group: jax.tree_util.tree_map_with_path(put, state[group])}


def test_health_check_wants_finite_arrays_finite_predictions_and_no_explosion():
    graphdef, _, state, batch = toy_run()
    guard = health.HealthCheck(jax.jit(health.make_check(graphdef, toy_loss, True)), last_good=2)
    assert guard.problem(state, batch) is None
    # A NaN anywhere in the state: named by its group; training cannot go on from it.
    for group, leaf, value, named in (("rest", "['var'].value", jnp.nan, "batch statistics"),
                                      ("params", "['kernel'].value", jnp.inf, "parameters")):  # fmt: skip
        bad = with_leaf(state, group, leaf, value)
        assert guard.problem(bad, batch) == (f"non-finite {named}", False)
    bad = {**state, "opt_state": jax.tree.map(lambda x: x * jnp.nan, state["opt_state"])}
    assert guard.problem(bad, batch)[0] == "non-finite optimizer state"
    # Every array finite and the training loss (batch statistics) finite, but the running mean
    # and the scale (1e20 x 1e30 overflows float32) make every prediction NaN: not healthy.
    diverged = with_leaf(with_leaf(state, "rest", "['mean'].value", 1e20), "params",
                         "['bn']['scale'].value", 1e30)  # fmt: skip
    model = nnx.merge(graphdef, diverged["params"], diverged["rest"])
    assert np.isfinite(float(toy_loss(model, batch, None)[0]))
    assert not np.isfinite(np.asarray(model(batch["x"], train=False))).all()
    assert guard.problem(diverged, batch) == (
        "the network's outputs in inference mode on the current batch are not finite: it would "
        "predict NaN", False)  # fmt: skip
    # A non-finite loss from finite outputs is the objective overflowing, not a network that
    # predicts NaN: not written, but not the end of the run.
    overflowing = health.HealthCheck(jax.jit(health.make_check(
        graphdef, lambda m, b, k: (toy_loss(m, b, k)[0] * jnp.inf, {}), True)), last_good=2)  # fmt: skip
    assert overflowing.problem(state, batch) == (
        "its inference-mode loss on the current batch is inf", True)  # fmt: skip
    # Finite but exploded against the logged history: skipped, training may go on.
    loss = float(guard.check(state, batch)["loss"])
    for x in (loss / 50, loss / 200, loss / 300):
        guard.record(x)
    guard.record(float("nan"))  # a non-finite logged loss is not history
    what, recoverable = guard.problem(state, batch)
    expected = (f"its inference-mode loss {loss:.4g} on the current batch is over 100 x the "
                f"median {loss / 200:.4g} of the last 3 logged training losses: exploded")  # fmt: skip
    assert recoverable and what == expected, what
    guard.losses.clear()
    guard.record(loss / 50)  # 50 x: within the factor
    assert guard.problem(state, batch) is None
    assert guard.describe_last() == "last good checkpoint: step 2"
    assert health.HealthCheck(guard.check, None).describe_last() == "no good checkpoint was written"


def test_a_finite_loss_with_nan_gradients_skips_the_step():
    """A finite loss can come with NaN gradients (here the gradient of an unselected branch):
    applied, they would turn every parameter into NaN. The step is skipped and counted."""
    graphdef, tx, state, batch = toy_run()

    def loss_fn(model, batch, key):
        loss, metrics = toy_loss(model, batch, key)
        w = model.lin.kernel[...]
        return loss + jnp.sum(jnp.where(w > 1e9, jnp.sqrt(-w), 0.0)), metrics

    step = jax.jit(train.make_train_step(graphdef, loss_fn, tx, 0.0))
    new, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
    assert int(new["step"]) == 2 and int(new["nonfinite"]) == 1
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(new["params"]), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------- runs with two checkpoints (2, 4)


def ramp(**overrides):
    """The tiny ResNet baseline (the fastest to compile) with a learning rate that ramps up
    linearly to 1e3 over 100,000 steps: healthy for the first steps, diverging after about ten.
    The schedule's constants do not depend on ``num_steps`` (below the ramp), so every run of this
    module, whatever its length, uses one compiled train step."""
    return tiny(fashion_mnist_resnet, **{"eval.after_train": False, "optimizer.lr": 1e3,
                                         "optimizer.warmup_steps": 100_000, **overrides})  # fmt: skip


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> pathlib.Path:
    """A :func:`ramp` run of 4 steps with checkpoints at steps 2 and 4; each test works on a copy
    (``fresh_run``)."""
    workdir = tmp_path_factory.mktemp("runs") / "two_checkpoints"
    train.train(ramp(), str(workdir))
    return workdir


@pytest.fixture
def fresh_run(two_checkpoints, tmp_path) -> pathlib.Path:
    workdir = tmp_path / "run"
    shutil.copytree(two_checkpoints, workdir)
    return workdir


def steps_on_disk(workdir) -> list[int]:
    return sorted(checkpoint.manager(str(workdir), read_only=True).all_steps())


def assert_restores_finite_and_predicts(workdir, step: int) -> None:
    """The checkpoint's arrays (parameters, batch statistics, optimizer state) are finite and its
    predictions are probabilities."""
    _, state, _, _ = restore_for_eval(ramp(), str(workdir), step=step)
    for group in ("params", "rest", "opt_state"):
        for leaf in jax.tree.leaves(state[group]):
            if np.issubdtype(leaf.dtype, np.inexact):
                assert np.isfinite(np.asarray(leaf)).all(), (step, group)
    images, _ = fashion_mnist.load("test")
    probs = api.load(workdir, step=step).predict(images[:16])
    assert np.isfinite(probs).all(), step
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-4)


def assert_diverged_and_named_a_good_checkpoint(workdir, error: FloatingPointError, caplog,
                                               start: int = 4) -> tuple[int, str]:  # fmt: skip
    """The run from ``start`` stopped at an unhealthy state, naming as last good checkpoint the
    newest on disk, which restores finite and predicts; every training loss it logged was finite
    (what the old check let through); every skipped state was one warning line. Returns (the
    failing step, what was wrong)."""
    match = re.search(r"^step (\d+): the train state is not healthy \((.*)\); its checkpoint is "
                      r"not written \(last good checkpoint: step (\d+)\); lower the learning rate",
                      str(error))  # fmt: skip
    assert match, str(error)
    failed_at, named = int(match[1]), int(match[3])
    assert start <= named < failed_at and named == max(steps_on_disk(workdir))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["step"] > start]
    assert len(losses) == (failed_at - start) // 2 and all(np.isfinite(losses)), losses
    assert_restores_finite_and_predicts(workdir, named)
    skipped = [r.getMessage() for r in caplog.records if "not healthy" in r.getMessage()]
    assert all(m.endswith("; training goes on") and "\n" not in m for m in skipped), skipped
    return failed_at, match[2]


@needs_data
def test_a_diverging_run_names_a_last_good_checkpoint_that_predicts(fresh_run, caplog):
    """The ramp to lr 1e3 from step 4 on: the training loss (the batch's own BatchNorm
    statistics) stays about 2, while in inference mode (the running statistics) the loss explodes
    from step 12 on. Checked at steps 6 (written), 12 (exploded: skipped with a warning) and 14,
    the last, which stops the run naming step 6, which restores finite and predicts."""
    config = ramp(num_steps=14, checkpoint_every_steps=6)
    with caplog.at_level(logging.WARNING, logger="didiff_jax"):
        with pytest.raises(FloatingPointError) as failed:
            train.train(config, str(fresh_run))
    failed_at, what = assert_diverged_and_named_a_good_checkpoint(fresh_run, failed.value, caplog)
    assert failed_at == 14 and what.endswith(": exploded"), what
    (skipped,) = [r.getMessage() for r in caplog.records if "training goes on" in r.getMessage()]
    assert skipped.startswith("step 12: the train state is not healthy"), skipped


@pytest.mark.slow  # ~15 s on 2 cores: the train step of another learning rate compiles
@needs_data
def test_lr_1e3_stops_at_a_state_that_predicts_nan_naming_a_checkpoint_that_predicts(fresh_run,
                                                                                    caplog):  # fmt: skip
    """The issue's case, ``--config.optimizer.lr=1e3`` (here from step 4, no warm-up): the
    training loss stays finite while the state soon predicts NaN. That state is not written, and
    the checkpoint the error names restores finite and predicts."""
    config = ramp(num_steps=20, **{"optimizer.warmup_steps": 0})
    with caplog.at_level(logging.WARNING, logger="didiff_jax"):
        with pytest.raises(FloatingPointError) as failed:
            train.train(config, str(fresh_run))
    _, what = assert_diverged_and_named_a_good_checkpoint(fresh_run, failed.value, caplog)
    assert "it would predict NaN" in what or what.startswith("non-finite"), what


@needs_data
def test_an_exploded_state_is_not_written_and_training_goes_on(fresh_run, caplog, monkeypatch):
    """With the explosion factor made tiny, every state counts as exploded: the checkpoint of step
    6 is skipped with one warning line and training goes on; at the last step the run stops."""
    monkeypatch.setattr(health, "EXPLODED_FACTOR", 1e-6)
    config = ramp(num_steps=8)
    unhealthy = (r"step {step}: the train state is not healthy \(its inference-mode loss \S+ on "
                 r"the current batch is over 1e-06 x the median \S+ of the last \d logged "
                 r"training losses: exploded\); its checkpoint is not written \(last good "
                 r"checkpoint: step 4\)")  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="didiff_jax"):
        with pytest.raises(FloatingPointError, match="^" + unhealthy.format(step=8)):
            train.train(config, str(fresh_run))
    (warning,) = [r.getMessage() for r in caplog.records if "not healthy" in r.getMessage()]
    assert re.fullmatch(unhealthy.format(step=6) + "; training goes on", warning), warning
    assert steps_on_disk(fresh_run) == [2, 4]
    logged = [json.loads(line)["step"] for line in (fresh_run / "metrics.jsonl").read_text()
              .splitlines()]  # fmt: skip
    assert logged == [2, 4, 6, 8]


@needs_data
def test_resuming_from_a_checkpoint_that_predicts_nan_stops_before_training(fresh_run, caplog):
    """A checkpoint with NaN batch statistics (as an earlier version could write), saved without
    a data-iterator state (as convert's import writes them): the run stops before its first step,
    naming it; nothing is trained or written."""
    config = ramp(num_steps=8)
    _, state, _, _ = restore_for_eval(config, str(fresh_run), step=4)
    nan = jax.tree.map(lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.inexact) else x,
                       state["rest"])  # fmt: skip
    mgr = checkpoint.manager(str(fresh_run))
    checkpoint.save(mgr, 6, {**state, "rest": nan, "step": jnp.asarray(6, jnp.int32)}, force=True)
    mgr.wait_until_finished()
    before = (fresh_run / "metrics.jsonl").read_text()
    ckpts = re.escape(str(fresh_run / "checkpoints"))
    with caplog.at_level(logging.WARNING, logger="didiff_jax"):
        with pytest.raises(FloatingPointError, match=rf"^checkpoint {ckpts}/6, which the run resumes "
                                                     r"from, is not healthy \(non-finite batch "
                                                     r"statistics\): move it away to resume from "
                                                     r"an earlier one; lower the learning rate"):  # fmt: skip
            train.train(config, str(fresh_run))
    assert any(re.fullmatch(rf"checkpoint {ckpts}/6 has no data-iterator state: the data order "
                            r"starts from the beginning", r.getMessage()) for r in caplog.records)  # fmt: skip
    assert steps_on_disk(fresh_run) == [4, 6]
    assert (fresh_run / "metrics.jsonl").read_text() == before


# ----------------------------------------------------------------------- one run per workdir

HOLDER = textwrap.dedent("""
    import sys, time
    from didiff_jax import checkpoint
    with checkpoint.workdir_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(600)
""")


def hold_lock(workdir) -> subprocess.Popen:
    """A process that holds ``workdir``'s lock (the training run's own code path) until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def end(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` (no exit handler runs, as for a run killed by the OS) and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


@needs_data
def test_a_second_run_on_a_workdir_in_use_fails_at_once_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    holder = hold_lock(workdir)
    try:
        started = time.time()
        out = subprocess.run(
            [sys.executable, "-m", "didiff_jax.main", "--workdir", str(workdir),
             "--config", str(REPO / "configs" / "fashion_mnist_resnet.py") + ":smoke"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        elapsed = time.time() - started
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2, out.stderr
        assert len(lines) == 1, out.stderr
        assert re.fullmatch(
            rf"error: workdir {re.escape(str(workdir))} is in use by another training run \(pid "
            rf"{holder.pid} on \S+ since \S+; lock file {re.escape(str(workdir / '.lock'))}\): one "
            r"run per workdir; wait for that run to end or stop it, or choose another --workdir",
            lines[0],
        ), lines[0]
        assert sorted(p.name for p in workdir.iterdir()) == [".lock"]  # nothing written
        assert elapsed < 60, elapsed  # before any compilation
        # In process too (train.train takes the lock before its first write).
        with pytest.raises(checks.InputError, match=rf"pid {holder.pid} on "):
            train.train(tiny(fashion_mnist_resnet), str(workdir))
        assert sorted(p.name for p in workdir.iterdir()) == [".lock"]
    finally:
        end(holder)


def test_a_killed_run_leaves_no_lock_behind(tmp_path):
    workdir = tmp_path / "run"
    holder = hold_lock(workdir)
    with pytest.raises(checks.InputError, match="is in use by another training run"):
        with checkpoint.workdir_lock(str(workdir)):
            pass
    end(holder)
    assert f"pid {holder.pid} " in (workdir / ".lock").read_text()  # the file stays, unlocked
    with checkpoint.workdir_lock(str(workdir)):
        assert (workdir / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
        with checkpoint.workdir_lock(str(workdir)):  # re-entrant in the process that holds it
            pass
        other = subprocess.run([sys.executable, "-c", HOLDER, str(workdir)], cwd=REPO, text=True,
                               capture_output=True, timeout=120,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
        assert other.returncode == 1 and f"pid {os.getpid()} on " in other.stderr
    end(hold_lock(workdir))  # released on leaving: another process takes it


# ------------------------------------------------------------------------ damaged checkpoints


def truncate_newest_array_file(workdir, step: int) -> str:
    """Cut the largest array file of checkpoint ``step`` to a tenth (as a full disk or a copy
    that stopped would); returns its path."""
    files = [p for p in (workdir / "checkpoints" / str(step) / "state").rglob("*")
             if p.is_file() and "/d/" in str(p)]  # fmt: skip
    largest = max(files, key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 10)
    return str(largest)


DAMAGED = (r"checkpoint {dir}/4 is damaged \(ValueError: OUT_OF_RANGE: Error reading .*"
           r"Requested byte range .* is not valid for value of size \d+\)")  # fmt: skip


@needs_data
def test_resume_falls_back_from_a_damaged_newest_checkpoint(fresh_run, caplog):
    truncate_newest_array_file(fresh_run, 4)
    config = ramp(num_steps=6)
    with caplog.at_level(logging.WARNING, logger="didiff_jax"):
        run = train.train(config, str(fresh_run))
    ckpts = fresh_run / "checkpoints"
    warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert re.fullmatch(DAMAGED.format(dir=re.escape(str(ckpts))) + r"; using step 2, the newest "
                        rf"intact checkpoint; moved to {re.escape(str(fresh_run))}/"
                        r"damaged_checkpoints/4", warnings[0]), warnings[0]  # fmt: skip
    # Steps 3-6 trained again from step 2; the damaged checkpoint is kept aside, not lost.
    assert int(run["state"]["step"]) == 6 and steps_on_disk(fresh_run) == [4, 6]
    assert (fresh_run / "damaged_checkpoints" / "4" / "state").is_dir()
    logged = [json.loads(line)["step"] for line in (fresh_run / "metrics.jsonl").read_text()
              .splitlines()]  # fmt: skip
    assert logged == [2, 4, 4, 6]
    # No intact checkpoint left: the run stops before training, naming each, and moves nothing.
    for step in (4, 6):
        truncate_newest_array_file(fresh_run, step)
    with pytest.raises(checkpoint.CheckpointDamaged, match=rf"^no intact checkpoint in "
                       rf"{re.escape(str(ckpts))} \(step 6: .*; step 4: .*\); to start the run "
                       rf"again, delete or move {re.escape(str(ckpts))}$"):  # fmt: skip
        train.train(config, str(fresh_run))
    assert steps_on_disk(fresh_run) == [4, 6]


@needs_data
def test_evaluation_uses_the_newest_intact_checkpoint_or_fails_in_one_line(fresh_run, caplog):
    config = ramp()
    ckpts = fresh_run / "checkpoints"
    truncate_newest_array_file(fresh_run, 4)
    with caplog.at_level(logging.WARNING, logger="didiff_jax"):
        _, state, _, _ = restore_for_eval(config, str(fresh_run))
    assert int(state["step"]) == 2
    (warning,) = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert re.fullmatch(DAMAGED.format(dir=re.escape(str(ckpts))) + r"; using step 2, the newest "
                        r"intact checkpoint", warning), warning  # fmt: skip
    assert steps_on_disk(fresh_run) == [2, 4]  # evaluation moves nothing
    # The damaged step asked for by name: one line saying what to do.
    with pytest.raises(checkpoint.CheckpointDamaged) as damaged:
        restore_for_eval(config, str(fresh_run), step=4)
    assert re.fullmatch(DAMAGED.format(dir=re.escape(str(ckpts))) + r"; saved steps: \[2, 4\]: "
                        rf"restore another step, or delete {re.escape(str(ckpts))}/4 to use the "
                        r"newest intact one", str(damaged.value)), str(damaged.value)  # fmt: skip
    # None intact: the command line says so in one line (status 2), naming every damaged step.
    truncate_newest_array_file(fresh_run, 2)
    out = subprocess.run([sys.executable, "-m", "didiff_jax.main", "--mode", "eval",
                          "--workdir", str(fresh_run), "--config",
                          str(REPO / "configs" / "fashion_mnist_resnet.py") + ":smoke",
                          "--config.model.width=8"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
    assert re.fullmatch(rf"error: no intact checkpoint in {re.escape(str(ckpts))} \(step 4: "
                        r"ValueError: OUT_OF_RANGE: .*; step 2: ValueError: OUT_OF_RANGE: .*\); to "
                        rf"start the run again, delete or move {re.escape(str(ckpts))}",
                        errors[0]), errors[0]  # fmt: skip
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
