"""Test set-up: 8 fake CPU devices, so that sharding code runs on one CPU host.

The flag must be set before jax is imported anywhere, hence at conftest import time.
"""

import os

FAKE_DEVICES = "--xla_force_host_platform_device_count=8"
# The tests compile hundreds of small programs and run each a few times: LLVM's optimisation
# level 0 compiles them ~4x faster (XLA's own HLO passes, fusion included, still run; the
# results are the same operations). Set XLA_FLAGS with another level to test that one.
FAST_COMPILE = "--xla_backend_optimization_level=0"
_flags = os.environ.get("XLA_FLAGS", "").split()
if FAKE_DEVICES not in _flags:  # xdist workers inherit the controller's environment
    _flags.append(FAKE_DEVICES)
    if not any(f.startswith("--xla_backend_optimization_level") for f in _flags):
        _flags.append(FAST_COMPILE)
    os.environ["XLA_FLAGS"] = " ".join(_flags)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Cache every compilation, not only those over 1 s (at optimisation level 0 most are shorter):
# the subprocesses of one test (kill and resume, several processes) then compile each program once.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# One persistent compilation cache per test session, inherited by the xdist workers and by the
# subprocesses the end-to-end tests start: the same smoke programs compile once, not per process.
# Likewise one folder per test session for the smoke runs (``smoke_run``), shared by the workers.
for _var, _prefix in (("JAX_COMPILATION_CACHE_DIR", "didiff_jax_xla_cache_"),
                      ("DIDIFF_TEST_RUNS_DIR", "didiff_jax_test_runs_")):  # fmt: skip
    if _var not in os.environ:
        import tempfile

        os.environ[_var] = tempfile.mkdtemp(prefix=_prefix)

import jax  # noqa: E402
import pytest  # noqa: E402

from didiff_jax.state import init_train_state  # noqa: E402


def single_device_env(**extra: str) -> dict[str, str]:
    """This environment without the 8-fake-device flag (for subprocesses on one CPU device)."""
    env = {**os.environ, **extra}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if f != FAKE_DEVICES]
    env.pop("XLA_FLAGS", None)
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    return env


@pytest.fixture(scope="session")
def devices():
    """The 8 fake CPU devices."""
    devs = jax.devices()
    assert len(devs) == 8, f"expected 8 fake CPU devices, got {devs}"
    return devs


@pytest.fixture(scope="session")
def smoke_run():
    """``smoke_run(config_file, trained=True, **overrides) -> workdir``: a run of
    ``configs/<config_file>:smoke`` (dotted ``overrides``, e.g. ``**{"model.width": 8}``), made once
    per test session and shared by the tests and the xdist workers (the notebook and API tests
    load the same runs; under a file lock, one worker makes a run while the others wait). Trained
    by the main job in a subprocess on one CPU device (its compilations cost a third less than on
    the 8 fake devices). ``trained=False`` saves the initial state as the step-0 checkpoint: the same layout,
    without compiling a train step."""
    import fcntl
    import hashlib
    import importlib
    import pathlib
    import shutil
    import subprocess
    import sys

    from didiff_jax import checkpoint, optim, sharding
    from didiff_jax.data import pipeline

    repo = pathlib.Path(__file__).resolve().parents[1]
    shared = pathlib.Path(os.environ["DIDIFF_TEST_RUNS_DIR"])

    def make(config_file: str, *, trained: bool = True, **overrides) -> str:
        key = (config_file, trained, tuple(sorted(overrides.items())))
        name = f"{config_file}-{hashlib.sha256(repr(key).encode()).hexdigest()[:12]}"
        workdir, done = str(shared / name), shared / f"{name}.done"
        with open(shared / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not done.exists():
                shutil.rmtree(workdir, ignore_errors=True)  # a run another worker left half-made
                os.makedirs(workdir)
                build(config_file, workdir, trained, overrides)
                done.touch()
        return workdir

    def build(config_file: str, workdir: str, trained: bool, overrides: dict) -> None:
        if trained:
            cmd = [sys.executable, "-m", "didiff_jax.main", "--workdir", workdir,
                   "--config", str(repo / "configs" / f"{config_file}.py:smoke"),
                   "--config.eval.after_train=False",
                   *(f"--config.{k}={v}" for k, v in overrides.items())]  # fmt: skip
            out = subprocess.run(cmd, cwd=repo, env=single_device_env(),
                                 capture_output=True, text=True, timeout=900)  # fmt: skip
            if out.returncode:
                raise RuntimeError(f"training {config_file}:smoke failed:\n{out.stderr[-4000:]}")
        else:
            config = importlib.import_module(f"configs.{config_file}").get_config("smoke")
            config.update_from_flattened_dict(overrides)
            info = pipeline.dataset_info(config.data)
            tx, _ = optim.make_optimizer(config.optimizer, 1)
            mesh = sharding.make_mesh(**config.mesh)
            rules = sharding.parse_rules(config.get("sharding_rules"))
            _, _, _, init_fn = init_train_state(config, info, tx, mesh, rules)
            mgr = checkpoint.manager(workdir)
            checkpoint.write_config(workdir, config)
            checkpoint.save(mgr, 0, init_fn(), force=True)
            mgr.wait_until_finished()

    return make
