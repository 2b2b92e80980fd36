"""Scale-out: ``jax.distributed`` start-up rules, remote workdirs, the per-process data split, and
several processes on this machine (``launch/local.sh``, CPU gloo collectives) that train exactly
like one process, write checkpoints a one-process run resumes, and stop together when one dies."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from etils.epath import testing as epath_testing

from configs import fashion_mnist_didirn
from didiff_jax import checkpoint, distributed, evaluate, metrics, train
from didiff_jax.data import fashion_mnist, pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(
    not pathlib.Path(fashion_mnist.DEBIAN_DIR).is_dir()
    and "DIDIFF_FASHION_MNIST" not in os.environ,
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)

# ------------------------------------------------------------------------ start-up decisions


def test_explicit_coordinator_settings():
    env = {"DIDIFF_COORDINATOR": "10.0.0.1:1234", "DIDIFF_NUM_PROCESSES": "4",
           "DIDIFF_PROCESS_ID": "3", "DIDIFF_HEARTBEAT_TIMEOUT": "7"}  # fmt: skip
    plan = distributed.plan(env, on_tpu_vm=False)
    assert plan.kwargs == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                           "process_id": 3, "heartbeat_timeout_seconds": 7,
                           "initialization_timeout": 300}  # fmt: skip
    for broken, message in (({"DIDIFF_PROCESS_ID": None}, "DIDIFF_PROCESS_ID must be set"),
                            ({"DIDIFF_PROCESS_ID": "4"}, r"must lie in \[0, DIDIFF_NUM_PROCESSES=4\)"),
                            ({"DIDIFF_NUM_PROCESSES": "two"}, "is not an integer"),
                            ({"DIDIFF_COORDINATOR": "10.0.0.1"}, "expected host:port")):  # fmt: skip
        bad = {k: v for k, v in {**env, **broken}.items() if v is not None}
        with pytest.raises(ValueError, match=message):
            distributed.plan(bad, on_tpu_vm=False)


def test_auto_detection_slurm_tpu_flag_and_off_switch():
    slurm = {"SLURM_JOB_ID": "42", "SLURM_PROCID": "5", "SLURM_NTASKS": "16"}
    assert distributed.plan({}, on_tpu_vm=False) is None
    assert distributed.plan(slurm, on_tpu_vm=False).how == "SLURM job 42"
    # Auto-detection: JAX reads the cluster itself, so only the timeouts are passed.
    assert set(distributed.plan(slurm, on_tpu_vm=False).kwargs) == {
        "heartbeat_timeout_seconds", "initialization_timeout"}  # fmt: skip
    assert distributed.plan({**slurm, "SLURM_NTASKS": "1"}, on_tpu_vm=False) is None  # 1 task
    assert distributed.plan({"SLURM_JOB_ID": "42"}, on_tpu_vm=False) is None  # sbatch, not srun
    assert distributed.plan({}, on_tpu_vm=True).how == "Cloud TPU VM"
    assert distributed.plan({}, requested=True, on_tpu_vm=False) is not None
    assert distributed.plan({"DIDIFF_DISTRIBUTED": "1"}, on_tpu_vm=False) is not None
    assert distributed.plan({**slurm, "DIDIFF_DISTRIBUTED": "0"}, on_tpu_vm=True) is None
    with pytest.raises(ValueError, match="DIDIFF_DISTRIBUTED='maybe'"):
        distributed.plan({"DIDIFF_DISTRIBUTED": "maybe"}, on_tpu_vm=False)


def test_tpu_vm_needs_libtpu_and_tpu_device_nodes(tmp_path, monkeypatch):
    (tmp_path / "vfio").mkdir()
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: object())
    assert not distributed._on_cloud_tpu_vm(str(tmp_path))
    (tmp_path / "vfio" / "0").touch()  # a v5+ TPU chip
    assert distributed._on_cloud_tpu_vm(str(tmp_path))
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
    assert not distributed._on_cloud_tpu_vm(str(tmp_path))  # no libtpu: not a TPU VM


# ---------------------------------------------------------------------------- remote paths


def test_workdir_paths_keep_remote_uris():
    assert str(checkpoint.workdir_path("gs://bucket/run/")) == "gs://bucket/run"
    assert str(checkpoint.workdir_path("gs://bucket/run") / "metrics.jsonl") == (
        "gs://bucket/run/metrics.jsonl"
    )
    assert checkpoint._ckpt_dir("gs://bucket/run") == "gs://bucket/run/checkpoints"
    assert checkpoint._ckpt_dir("runs/x") == str(pathlib.Path("runs/x").absolute() / "checkpoints")


def test_gs_workdir_writes_go_to_the_bucket_not_a_local_folder(tmp_path, monkeypatch):
    """Config, metrics, results and plots of a ``gs://`` workdir: with epath's gs:// backend
    redirected to a local folder, everything lands there, and nothing creates a local ``gs:``."""
    bucket = tmp_path / "fake_gcs"
    monkeypatch.chdir(tmp_path)

    def local(path):
        text = os.fspath(path)
        assert text.startswith("gs://bucket/"), text
        return str(bucket) + text[len("gs://bucket") :]

    real_makedirs, real_mkdir = os.makedirs, os.mkdir

    def no_gs(fn):
        def guarded(path, *a, **kw):
            assert not os.fspath(path).startswith("gs:"), f"local folder {path} created"
            return fn(path, *a, **kw)

        return guarded

    monkeypatch.setattr(os, "makedirs", no_gs(real_makedirs))
    monkeypatch.setattr(os, "mkdir", no_gs(real_mkdir))
    config = fashion_mnist_didirn.get_config("smoke")
    info = pipeline.dataset_info(config.data)
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(0), (8, 10)))
    stats = metrics.batch_stats(probs, jax.numpy.arange(8) % 10)
    result = metrics.finalize(metrics.accumulate(None, stats))
    records = [{"model": "didirn18", "objective": "didicm", "run": "gs://bucket/run",
                "sampler": "cp-euler", "steps": 2, "condition": c, "severity": s,
                "top1": result["top1"], "top5": result["top5"], "nll": result["nll"],
                "ece": result["ece"], "count": 8, "top1_per_step": [0.1, result["top1"]],
                "reliability": result["reliability"]}
               for c, s in (("clean", 0), ("gaussian_noise", 3))]  # fmt: skip
    trajectories = {("cp-euler", 2): (np.full((2, 4, 10), 0.1), np.arange(4))}
    with epath_testing.mock_epath(
        open=lambda fn, path, mode: fn(local(path), mode),
        makedirs=lambda fn, path, exist_ok=False: fn(local(path), exist_ok=exist_ok),
        mkdir=lambda fn, path, exist_ok=False: fn(local(path), exist_ok=exist_ok),
        exists=lambda fn, path: fn(local(path)),
        isdir=lambda fn, path: fn(local(path)),
        stat=lambda fn, path: fn(local(path)),
    ):
        checkpoint.write_config("gs://bucket/run", config)
        assert checkpoint.read_config("gs://bucket/run").model.name == "didirn18"
        progress = train.Progress("gs://bucket/run", total=4, batch_size=16, start=0)
        progress(2, {"loss": 1.5}, 1e-3)
        evaluate._write(config, "gs://bucket/run", records, trajectories, info)
    run = bucket / "run"
    assert json.loads((run / "metrics.jsonl").read_text())["loss"] == 1.5
    assert len(json.loads((run / "eval_results.json").read_text())["records"]) == 2
    assert {p.name for p in (run / "plots").iterdir()} == {
        "accuracy_vs_severity.png", "accuracy_vs_steps.png", "reliability.png",
        "trajectory_cp-euler_2.png"}  # fmt: skip
    assert not any(p.name.startswith("gs:") for p in tmp_path.iterdir())


# ------------------------------------------------------------------------ the data split


@needs_data
def test_processes_read_contiguous_blocks_of_the_global_batch(monkeypatch):
    """Process p of P holds rows [p B/P, (p+1) B/P) of each global batch, so the global batch
    (what the mesh sees, in order) is the one-process batch, for training and evaluation."""
    config = fashion_mnist_didirn.get_config("smoke")
    info = pipeline.dataset_info(config.data)
    source = pipeline.ArraySource(*fashion_mnist.load("train", None))
    subset = pipeline.IndexedSource(source, np.arange(2000))  # a slice keeps the test quick

    def batches(P, p, kind):
        monkeypatch.setattr(jax, "process_count", lambda: P)
        monkeypatch.setattr(jax, "process_index", lambda: p)
        if kind == "train":
            it = iter(pipeline.train_dataset(config.data, info, global_batch_size=16, seed=0,
                                             source=subset))  # fmt: skip
            return [next(it) for _ in range(3)]
        ds = pipeline.eval_dataset(config.data, info, split="test", global_batch_size=16,
                                   source=subset, max_examples=40)  # fmt: skip
        return list(ds)

    for kind in ("train", "eval"):
        one = batches(1, 0, kind)
        halves = [batches(2, p, kind) for p in (0, 1)]
        assert len(halves[0]) == len(halves[1]) == len(one)
        for i, whole in enumerate(one):
            for key in whole:
                joined = np.concatenate([halves[0][i][key], halves[1][i][key]])
                np.testing.assert_array_equal(joined, whole[key], err_msg=f"{kind} {i} {key}")


def test_data_iterator_position_carries_over_to_another_process_count(tmp_path):
    class Manager:
        directory = tmp_path

    folder = tmp_path / "6" / "data_iter"
    folder.mkdir(parents=True)
    for p in (0, 1):
        (folder / f"process_{p}-of-2.json").write_text('{"next_index": 6}')
    assert checkpoint._iterator_state_from_other_process_count(Manager, 6) == {"next_index": 6}
    (folder / "process_0-of-1.json").write_text('{"next_index": 6}')
    assert checkpoint._iterator_state_from_other_process_count(Manager, 6) is None  # own file
    (folder / "process_0-of-1.json").unlink()
    (folder / "process_1-of-2.json").write_text('{"next_index": 5}')
    with pytest.raises(ValueError, match="cannot be carried over to 1 processes"):
        checkpoint._iterator_state_from_other_process_count(Manager, 6)


# ------------------------------------------------------------- several processes, one machine

MAIN_ARGS = ["--config", str(REPO / "configs" / "fashion_mnist_didirn.py") + ":smoke",
             "--config.model.width=8", "--config.eval.after_train=False"]  # fmt: skip


def clean_env(cache_dir: pathlib.Path, **extra) -> dict:
    """This test process's environment without its 8-device XLA flag, plus a shared persistent
    compilation cache (process 0 of a run writes it; a later identical program reads it)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir), PYTHON=sys.executable)
    env.update(extra)
    return env


def one_process(workdir, cache_dir, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "didiff_jax.main", *MAIN_ARGS, "--workdir", str(workdir), *extra],
        cwd=REPO, env=clean_env(cache_dir, XLA_FLAGS="--xla_force_host_platform_device_count=4"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, what: str) -> str:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{out[-5000:]}"
    return out


def params(workdir) -> list[np.ndarray]:
    """The step-4 parameters of a run, restored into this process's 8-device mesh (resharded)."""
    config = fashion_mnist_didirn.get_config("smoke")
    config.model.width = 8
    state = evaluate.restore_for_eval(config, str(workdir), step=4)[1]
    return [np.asarray(x) for x in jax.tree.leaves((state["params"], state["rest"]))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The persistent compilation cache of this module's runs."""
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache):
    """A one-process run over 4 devices and a two-process run over 2 x 2 devices (launch/local.sh)
    of the same config, 4 steps each; then the two-process checkpoint of step 2 resumed by one
    process over 4 devices, to step 4."""
    root = tmp_path_factory.mktemp("distributed")
    single = one_process(root / "single", cache)
    two = subprocess.Popen(
        ["bash", "launch/local.sh", "2", "--devices-per-process", "2", "--logdir",
         str(root / "logs"), "--", *MAIN_ARGS, "--workdir", str(root / "two")],
        cwd=REPO, env=clean_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    logs = {"single": finish(single, "one-process run"), "two": finish(two, "two-process run")}
    shutil.copytree(root / "two", root / "resumed")
    shutil.rmtree(root / "resumed" / "checkpoints" / "4")  # the run as if it had stopped at 2
    logs["resumed"] = finish(one_process(root / "resumed", cache), "resumed run")
    logs["process_1"] = (root / "logs" / "process_1.log").read_text()
    return root, logs


@needs_data
def test_two_processes_train_exactly_like_one(runs):
    root, logs = runs
    assert "process 0/2: 2 local of 4 cpu devices" in logs["two"]
    assert "process 1/2: 2 local of 4 cpu devices" in logs["process_1"]
    assert "step 2/4" not in logs["process_1"]  # only process 0 logs
    written = {p.name for p in (root / "two" / "checkpoints" / "4" / "data_iter").glob("process_*")}
    assert written == {"process_0-of-2.json", "process_1-of-2.json"}
    losses = {name: [json.loads(line)["loss"] for line in
                     (root / name / "metrics.jsonl").read_text().splitlines()]
              for name in ("single", "two")}  # fmt: skip
    assert losses["single"] == losses["two"] and len(losses["single"]) == 2
    for a, b in zip(params(root / "single"), params(root / "two"), strict=True):
        np.testing.assert_array_equal(a, b)


@needs_data
def test_two_process_checkpoint_resumes_in_one_process(runs):
    """The step-2 checkpoint of the two-process run, restored by one process (other device
    count, other process count for the data iterator), trains on to the same step-4 parameters
    as the uninterrupted one-process run."""
    root, logs = runs
    assert "step 4/4" in logs["resumed"] and "step 2/4" not in logs["resumed"]
    for a, b in zip(params(root / "single"), params(root / "resumed"), strict=True):
        np.testing.assert_array_equal(a, b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_data
@pytest.mark.parametrize("victim", [1])
def test_a_dying_process_ends_the_others_with_a_clear_error(tmp_path, cache, victim):
    """SIGKILL one of two processes mid-run: the other exits non-zero, saying why, instead of
    waiting for it forever."""
    port, workdir = free_port(), tmp_path / "run"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "didiff_jax.main",
                *MAIN_ARGS,
                "--workdir",
                str(workdir),
                "--config.log_every_steps=1",
                "--config.checkpoint_every_steps=1",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{i}.err").open("w"),
            env=clean_env(
                cache,
                XLA_FLAGS="--xla_force_host_platform_device_count=2",
                DIDIFF_COORDINATOR=f"127.0.0.1:{port}",
                DIDIFF_NUM_PROCESSES="2",
                DIDIFF_PROCESS_ID=str(i),
                DIDIFF_HEARTBEAT_TIMEOUT="10",
            ),
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        deadline = time.time() + 900
        while not (workdir / "metrics.jsonl").is_file():  # process 0 logged step 1
            assert time.time() < deadline and all(p.poll() is None for p in procs), "no step ran"
            time.sleep(0.02)
        procs[victim].send_signal(signal.SIGKILL)
        survivor = procs[1 - victim]
        try:
            survivor.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the surviving process still runs 120 s after the other died")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert survivor.returncode != 0
    err = (tmp_path / f"{1 - victim}.err").read_text()
    assert f"error: process {1 - victim}/2" in err and "another process" in err, err[-3000:]
    assert (checkpoint.manager(str(workdir), read_only=True).latest_step() or 0) < 4
