"""The main job end to end on tiny settings: train, checkpoint, resume, evaluate, fail clearly."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import (
    fashion_mnist_didirn,
    fashion_mnist_resnet,
)
from didiff_jax import checkpoint, losses, main, optim, sharding, train
from didiff_jax.data import fashion_mnist, pipeline
from didiff_jax.state import init_train_state, restore_for_eval
from tests.conftest import single_device_env

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not pathlib.Path(fashion_mnist.DEBIAN_DIR).is_dir()
    and "DIDIFF_FASHION_MNIST" not in os.environ,
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)


def tiny(config_module, **overrides):
    c = config_module.get_config("smoke")
    c.model.width = 8
    c.eval.severities = (3,)
    for k, v in overrides.items():
        target = c
        *parents, leaf = k.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = v
    return c


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def test_smoke_trains_saves_resumes_and_evaluates(tmp_path):
    # A trained baseline, evaluated on its own and then alongside the DiDiRN into one file.
    baseline = tiny(fashion_mnist_resnet)
    main.train_and_evaluate(baseline, str(tmp_path / "resnet"))
    alone = json.loads((tmp_path / "resnet" / "eval_results.json").read_text())["records"]
    config = tiny(fashion_mnist_didirn)
    config.eval.samplers = [*config.eval.samplers, {"name": "cl", "num_chains": 3, "steps": (2,)}]
    config.eval.baselines = (str(tmp_path / "resnet"),)
    main.train_and_evaluate(config, str(tmp_path))
    records = json.loads((tmp_path / "eval_results.json").read_text())["records"]
    alongside = [r for r in records if r["run"] == str(tmp_path / "resnet")]
    assert [(r["model"], r["condition"], r["top1"], r["nll"]) for r in alongside] == [
        (r["model"], r["condition"], r["top1"], r["nll"]) for r in alone
    ]
    assert {r["model"] for r in records} == {"resnet18", "didirn18"}
    assert (tmp_path / "config.json").is_file()
    assert checkpoint.manager(str(tmp_path), read_only=True).latest_step() == 4
    records = [r for r in records if r["model"] == "didirn18"]
    assert {(r["sampler"], r["steps"], r["condition"]) for r in records} >= {
        ("cp-euler", 2, "clean"),
        ("cp-analytic", 1, "gaussian_noise"),
        ("cl-euler-n3", 2, "clean"),
    }
    for r in records:
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0 and np.isfinite(r["nll"]) and r["count"] == 32
        assert len(r["top1_per_step"]) == r["steps"]
    for name in ("accuracy_vs_steps.png", "accuracy_vs_severity.png", "reliability.png",
                 "trajectory_cp-euler_2.png"):  # fmt: skip
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Resume: a longer run continues from step 4 instead of starting again.
    config.num_steps = 6
    config.eval.after_train = False
    config.tensorboard = True
    main.train_and_evaluate(config, str(tmp_path))
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [2, 4, 6]
    # TensorBoard event files (tensorboardX) hold the same scalars from the resumed steps.
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    assert b"train/loss" in events.read_bytes() and b"train/examples_per_s" in events.read_bytes()


def main_cmd(workdir, *extra):
    return [sys.executable, "-m", "didiff_jax.main",
            "--config", str(REPO / "configs" / "fashion_mnist_didirn.py") + ":smoke",
            "--workdir", str(workdir), "--config.model.width=8", *extra]  # fmt: skip


def run_main(workdir, *extra, check=True, env=None):
    cmd = main_cmd(workdir, *extra)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=check, timeout=600,
                          env=env)  # fmt: skip


def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    # The three runs (straight, killed, resumed) are main-job processes on one CPU device: one
    # program, compiled once into the persistent cache and then loaded, and cheaper than on the 8
    # fake devices. Resuming a sharded checkpoint is test_distributed's two-process test.
    common = ["--config.num_steps=8", "--config.checkpoint_every_steps=1",
              "--config.eval.after_train=False"]  # fmt: skip
    env = single_device_env()
    run_main(tmp_path / "straight", *common, env=env)
    proc = subprocess.Popen(main_cmd(tmp_path / "killed", *common), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    ckpt = tmp_path / "killed" / "checkpoints" / "3"
    deadline = time.time() + 300
    while not ckpt.is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = checkpoint.manager(str(tmp_path / "killed"), read_only=True).latest_step()
    assert latest is not None and latest < 8, "the run was not interrupted"
    run_main(tmp_path / "killed", *common, env=env)
    config = tiny(fashion_mnist_didirn)
    a = restore_for_eval(config, str(tmp_path / "straight"))[1]
    b = restore_for_eval(config, str(tmp_path / "killed"))[1]
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_unknown_config_key_suggests(tmp_path):
    result = run_main(tmp_path, "--config.optimizer.lrr=0.1", check=False)
    assert result.returncode != 0
    assert "Did you mean --config.optimizer.lr?" in result.stderr + result.stdout


def test_checkpoint_of_another_model_fails_naming_both(tmp_path):
    # The check is the same for every model: the ResNet baseline compiles fastest.
    config = tiny(fashion_mnist_resnet, **{"eval.after_train": False})
    main.train_and_evaluate(config, str(tmp_path))
    config.model.width = 16
    with pytest.raises(
        checkpoint.CheckpointMismatch,
        match=r"(?s)'width': 16.*written with model.*'width': 8.*shape mismatch",
    ):
        restore_for_eval(config, str(tmp_path))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    # The guard is in the train loop, the same for every model: the ResNet baseline compiles fastest.
    config = tiny(fashion_mnist_resnet, **{"eval.after_train": False})
    train.train(config, str(tmp_path))  # 4 good steps, checkpoint at 4
    real = losses.make_objective

    def nan_objective(cfg, num_classes):
        loss_fn = real(cfg, num_classes)

        def fn(model, batch, key):
            loss, metrics = loss_fn(model, batch, key)
            return loss * jnp.nan, metrics

        return fn

    monkeypatch.setattr(losses, "make_objective", nan_objective)
    config.num_steps = 8
    with pytest.raises(FloatingPointError, match="non-finite loss.*last good checkpoint: step 4"):
        train.train(config, str(tmp_path))
    assert checkpoint.manager(str(tmp_path), read_only=True).latest_step() == 4


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "nothing"))
    monkeypatch.delenv("DIDIFF_FASHION_MNIST", raising=False)
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist.load("train")  # the default place; a directory of the user's: test_bad_input


def test_predict_answers_good_images_and_names_bad_ones(tmp_path, capsys):
    config = tiny(fashion_mnist_didirn, **{"eval.after_train": False})
    main.train_and_evaluate(config, str(tmp_path))
    images, _ = fashion_mnist.load("test")
    good = tmp_path / "shoe.png"
    Image.fromarray(images[0, :, :, 0]).save(good)
    rgb = tmp_path / "big.jpg"
    Image.fromarray(np.stack([images[1, :, :, 0]] * 3, -1)).resize((64, 64)).save(rgb)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    results = main.predict(config, str(tmp_path), [str(good), str(bad), str(rgb)])
    assert "error" in results[1] and "broken.png" in results[1]["error"]
    for r in (results[0], results[2]):
        probs = [p for _, p in r["top5"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert 0.0 <= sum(probs) <= 1.0 + 1e-5 and 0.0 <= r["entropy"] <= np.log(10) + 1e-5
    out = capsys.readouterr().out
    assert "broken.png" in out and "shoe.png" in out


def test_eight_devices_equal_one(devices):
    """The same train step on a mesh of 8 devices and of 1 gives the same loss and parameters."""
    config = tiny(fashion_mnist_didirn)
    info = pipeline.dataset_info(config.data)
    tx, _ = optim.make_optimizer(config.optimizer, 10)
    loss_fn = losses.make_objective(config.objective, info.num_classes)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(16, 28, 28, 1)).astype(np.float32),
             "label": rng.integers(0, 10, 16).astype(np.int32)}  # fmt: skip
    results = []
    for devs in (devices[:1], devices):
        mesh = sharding.make_mesh(data=-1, fsdp=1, devices=devs)
        graphdef, _, shardings, init_fn = init_train_state(config, info, tx, mesh, ())
        step = jax.jit(train.make_train_step(graphdef, loss_fn, tx, 0.0),
                       in_shardings=(shardings, sharding.batch_sharding(mesh)),
                       out_shardings=(shardings, None))  # fmt: skip
        state = init_fn()
        gbatch = pipeline.to_global(batch, sharding.batch_sharding(mesh))
        for _ in range(2):
            state, metrics = step(state, gbatch)
        results.append((float(metrics["loss"]), leaves(state)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_ema_averages_floating_leaves_and_keeps_keys():
    key = jax.random.key_data(jax.random.key(3))
    ema = {"w": jnp.ones(3), "mean": jnp.zeros(2), "count": jnp.array(1, jnp.int32), "rng": key}
    new = {"w": jnp.full(3, 3.0), "mean": jnp.ones(2), "count": jnp.array(7, jnp.int32),
           "rng": jax.random.key_data(jax.random.key(4))}  # fmt: skip
    out = optim.ema_update(ema, new, 0.75)
    np.testing.assert_allclose(out["w"], 0.75 * 1 + 0.25 * 3)
    np.testing.assert_allclose(out["mean"], 0.25)
    assert int(out["count"]) == 7 and np.array_equal(out["rng"], new["rng"])
    # Warm-up: step 0 keeps 10% of the initial weights, then the decay rises to its cap.
    np.testing.assert_allclose(optim.ema_decay_at(0, 0.999), 0.1)
    np.testing.assert_allclose(optim.ema_decay_at(90, 0.999), 91 / 100)
    np.testing.assert_allclose(optim.ema_decay_at(10**6, 0.999), 0.999)


def test_didicm_log_score_clamp_is_the_official_one_unless_asked():
    """``log_score_clip=0`` [ref]: the hard-label loss is not clamped, the soft-label one is clamped
    to [-20, 20]; a positive value clamps both. A bad ``t_sampling`` is named."""
    import ml_collections

    from didiff_jax import diffusion as D

    B, K = 8, 10
    big = jnp.full((B, K), 30.0)  # a log-score beyond the clamp
    labels = jnp.arange(B) % K
    batch = {"image": jnp.zeros((B, 2, 2, 1)), "label": labels}
    soft = {**batch, "label_probs": jax.nn.one_hot(labels, K) * 0.9 + 0.01}
    model = lambda images, x_t, sigma, train: big  # noqa: E731
    key = jax.random.key(0)

    def loss(clip, b):
        cfg = ml_collections.ConfigDict({"name": "didicm", "log_score_clip": clip})
        return float(losses.make_objective(cfg, K)(model, b, key)[1]["score_entropy"])

    def reference(b, hard_clip, soft_clip):
        k_t, k_x = jax.random.split(key)
        sigma = D.LogLinear().sigma(D.sample_t(k_t, (B,)))
        if "label_probs" in b:
            p_t = D.uniform_marginal(b["label_probs"], sigma)
            x_t = D.sample_categorical(k_x, p_t)
            return float(D.soft_score_entropy(big, x_t, p_t, log_score_clip=soft_clip).mean())
        x_t = D.sample_uniform(k_x, labels, sigma, K)
        return float(D.score_entropy(big, x_t, labels, sigma, log_score_clip=hard_clip).mean())

    assert loss(0.0, batch) == pytest.approx(reference(batch, None, None), rel=1e-6)
    assert loss(0.0, batch) > 1e11  # e^30: not clamped
    assert loss(0.0, soft) == pytest.approx(reference(soft, None, 20.0), rel=1e-6)
    assert loss(5.0, batch) == pytest.approx(reference(batch, 5.0, None), rel=1e-6)
    assert loss(5.0, soft) == pytest.approx(reference(soft, None, 5.0), rel=1e-6)
    cfg = ml_collections.ConfigDict({"name": "didicm", "t_sampling": "sobol"})
    with pytest.raises(ValueError, match="t_sampling must be 'uniform' or 'stratified'"):
        losses.make_objective(cfg, K)
