"""Multi-process start-up: ``jax.distributed`` before anything touches devices.

didiff_jax scales out on JAX's own multi-controller runtime: every host runs the same program
(``python -m didiff_jax.main ...``), ``jax.distributed`` connects them, and ``jax.devices()`` is
then every device of every process. The mesh spans all of them, each process feeds the rows of the
global batch that live on its own devices (``pipeline.train_dataset``), and orbax writes one
checkpoint from all processes together.

``initialize`` decides from the environment alone (nothing may touch a device before it), first
match wins:

1. ``DIDIFF_COORDINATOR=host:port`` with ``DIDIFF_NUM_PROCESSES`` and ``DIDIFF_PROCESS_ID``:
   explicit settings (``launch/local.sh`` sets them; any launcher can);
2. ``--distributed`` or ``DIDIFF_DISTRIBUTED=1``: JAX's cluster auto-detection (Cloud TPU
   metadata, SLURM, Open MPI, Kubernetes); ``DIDIFF_DISTRIBUTED=0`` turns 3 and 4 off;
3. inside a SLURM job step of more than one task (``srun``; ``SLURM_NTASKS`` > 1): auto-detection,
   one process per task (on GPUs JAX gives each task the GPU of its ``SLURM_LOCALID``);
4. on a Cloud TPU VM (``libtpu`` installed and TPU device nodes present): auto-detection; a
   single-host VM becomes a one-process cluster, a pod slice one process per host.

Otherwise the run is single-process.

A process that dies takes the others down with it, within a bounded time: the next collective
of a survivor fails (its peer's connection is gone), and ``exit_on_error`` turns that into a
one-line error and exit code 1 at once, instead of a wait at JAX's shutdown barrier. A survivor
that is not in a collective is ended by JAX's coordination service once the dead process has
missed heartbeats for ``DIDIFF_HEARTBEAT_TIMEOUT`` seconds (default 100). ``DIDIFF_INIT_TIMEOUT``
(seconds, default 300) is how long start-up waits for every process to connect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib.util
import os
import sys
import traceback
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ENV_COORDINATOR = "DIDIFF_COORDINATOR"
ENV_NUM_PROCESSES = "DIDIFF_NUM_PROCESSES"
ENV_PROCESS_ID = "DIDIFF_PROCESS_ID"
ENV_DISTRIBUTED = "DIDIFF_DISTRIBUTED"
ENV_HEARTBEAT = "DIDIFF_HEARTBEAT_TIMEOUT"
ENV_INIT_TIMEOUT = "DIDIFF_INIT_TIMEOUT"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How to start ``jax.distributed``: ``how`` (for the log) and the keyword arguments."""

    how: str
    kwargs: dict[str, Any]


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"{ENV_COORDINATOR} is set, so {name} must be set too (an integer)")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _flag(environ: Mapping[str, str], name: str) -> bool | None:
    """``1/true/yes`` -> True, ``0/false/no`` -> False, unset or empty -> None."""
    value = environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {name}={environ[name]!r}: expected 1 or 0")


def _slurm_step_tasks(environ: Mapping[str, str]) -> int:
    """Tasks in this SLURM job step (0 outside SLURM or outside ``srun``)."""
    if "SLURM_JOB_ID" not in environ or "SLURM_PROCID" not in environ:
        return 0
    return int(environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or 1)


def _on_cloud_tpu_vm(dev: str = "/dev") -> bool:
    """libtpu installed and TPU chips attached (``/dev/accel*`` up to v4, ``/dev/vfio/<n>`` v5+)."""
    if importlib.util.find_spec("libtpu") is None:
        return False
    return bool(glob.glob(f"{dev}/accel[0-9]*") or glob.glob(f"{dev}/vfio/[0-9]*"))


def plan(environ: Mapping[str, str] | None = None, *, requested: bool = False,
         on_tpu_vm: bool | None = None) -> Plan | None:  # fmt: skip
    """Whether and how to start ``jax.distributed`` (see the module docstring), or None.

    ``environ`` defaults to ``os.environ``; ``requested`` is the ``--distributed`` flag;
    ``on_tpu_vm`` overrides the Cloud TPU VM check (for tests)."""
    environ = os.environ if environ is None else environ
    timeouts = {
        "heartbeat_timeout_seconds": _int(environ, ENV_HEARTBEAT, 100),
        "initialization_timeout": _int(environ, ENV_INIT_TIMEOUT, 300),
    }
    if environ.get(ENV_COORDINATOR):
        n, i = _int(environ, ENV_NUM_PROCESSES), _int(environ, ENV_PROCESS_ID)
        if not 0 <= i < n:
            raise ValueError(f"{ENV_PROCESS_ID}={i} must lie in [0, {ENV_NUM_PROCESSES}={n})")
        address = environ[ENV_COORDINATOR]
        if ":" not in address:
            raise ValueError(f"{ENV_COORDINATOR}={address!r}: expected host:port")
        kwargs = dict(coordinator_address=address, num_processes=n, process_id=i, **timeouts)
        return Plan(f"{ENV_COORDINATOR}={address}", kwargs)
    switch = _flag(environ, ENV_DISTRIBUTED)
    if requested or switch:
        return Plan("--distributed (cluster auto-detection)", timeouts)
    if switch is False:
        return None
    if _slurm_step_tasks(environ) > 1:
        return Plan(f"SLURM job {environ['SLURM_JOB_ID']}", timeouts)
    if on_tpu_vm if on_tpu_vm is not None else _on_cloud_tpu_vm():
        return Plan("Cloud TPU VM", timeouts)
    return None


def initialize(requested: bool = False) -> Plan | None:
    """Start ``jax.distributed`` when the environment asks for it (see ``plan``), then print this
    process's index and its local and global devices. Call before anything touches a device."""
    chosen = plan(requested=requested)
    if chosen is not None:
        jax.distributed.initialize(**chosen.kwargs)
    devices = jax.devices()
    if jax.process_count() > 1 and devices[0].platform == "cpu":
        _form_cpu_device_groups()
    print(
        f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local "
        f"of {len(devices)} {devices[0].platform} devices"
        + (f" (jax.distributed: {chosen.how})" if chosen else ""),
        flush=True,
    )
    return chosen


def _form_cpu_device_groups() -> None:
    """Run one collective over each device group that training uses, while the processes are
    still in step (``jax.distributed.initialize`` returns once all have connected).

    On CPU, the gloo collectives set up the communicator of a device group at its first
    collective and give every member 30 s to join (fixed in XLA); an established group waits as
    long as needed. Processes that start together can drift further apart than 30 s before their
    first collective (data loading, compilation on a busy machine). The groups: all devices (the
    reductions of the train step over the ``data`` axis) and the first device of each process
    (``multihost_utils`` and orbax's barriers)."""
    from jax.experimental import multihost_utils

    mesh = jax.sharding.Mesh(jax.devices(), ("all",))
    ones = jax.make_array_from_process_local_data(
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("all")),
        np.ones(jax.local_device_count(), np.int32),
    )  # [D]
    total = int(jax.jit(jnp.sum)(ones))
    if total != jax.device_count():
        raise RuntimeError(f"all-device sum over {jax.device_count()} devices gave {total}")
    multihost_utils.sync_global_devices("didiff_jax: processes started")


def is_main_process() -> bool:
    """Process 0 writes logs, metrics, plots and results; every process takes part in
    checkpointing, as orbax requires."""
    return jax.process_index() == 0


@contextlib.contextmanager
def exit_on_error():
    """In a multi-process run, an exception ends this process at once: the traceback, then a
    one-line reason on stderr, then exit code 1 without running exit handlers (JAX's shutdown
    barrier would wait for the other processes until the heartbeat timeout). The newest
    committed checkpoint stays valid; restarting every process resumes from it."""
    try:
        yield
    except Exception as e:
        if jax.process_count() == 1:
            raise
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        reason = f"{type(e).__name__}: {first}"
        if isinstance(e, jax.errors.JaxRuntimeError):
            reason += (
                " -- a collective with the other processes failed: another process has most "
                "likely died (see its log); restart all processes to resume from the last "
                "checkpoint"
            )
        print(f"error: process {jax.process_index()}/{jax.process_count()}: {reason}",
              file=sys.stderr, flush=True)  # fmt: skip
        sys.stdout.flush()
        os._exit(1)


def describe_machine() -> str:
    """This machine in one line, for benchmark reports: host CPU model, its widest x86 vector
    extension and cores, the accelerators if any (all processes' devices), and the JAX version.

    The vector extension is there because cloud VMs often give only the vendor's family as the
    model ("AMD EPYC"): two such 2-core VMs trained the same study run 1.9x apart
    (docs/results.md), and the model name alone did not tell them apart."""
    import platform

    cpu, flags = "", set()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not cpu:
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    cpu = cpu or platform.processor() or platform.machine()
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
                if flag in flags), "")  # fmt: skip
    dev = jax.devices()[0]
    accel = "" if dev.platform == "cpu" else f", {jax.device_count()} x {dev.device_kind}"
    isa = f" ({isa})" if isa else ""
    return f"{cpu}{isa}, {os.cpu_count()} cores{accel}; jax {jax.__version__}"
