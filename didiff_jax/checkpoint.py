"""Checkpoints with orbax: the train state, the data-iterator state and the run's config.

Layout of a workdir::

    <workdir>/config.json          the resolved config (written once, by process 0)
    <workdir>/checkpoints/<step>/  orbax: ``state`` (params, batch stats, optimizer, EMA, step, RNG)
                                   and ``data_iter`` (the grain iterator position)

    <workdir>/.lock                held by the training run that uses the workdir (``workdir_lock``)
    <workdir>/damaged_checkpoints/<step>/  a damaged checkpoint that a resumed run set aside

Saving is asynchronous (training continues while the previous step is written); the newest
``keep`` checkpoints are kept. A damaged checkpoint (a truncated or missing file) is never
restored: ``restore`` takes the newest intact one and says which it skipped. Every process calls
``save``/``restore``, as orbax requires; a checkpoint written by P processes restores in a run of
any other number of processes or devices (arrays are resharded; see ``restore`` for the data
iterator). A workdir may be remote
(``gs://bucket/run``): every path goes through ``workdir_path`` (etils.epath), never ``os``.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import importlib.util
import json
import logging
import os
import pathlib
import socket
from collections.abc import Iterator

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from didiff_jax import checks
from didiff_jax.sharding import path_str

log = logging.getLogger("didiff_jax")

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
DAMAGED_DIR = "damaged_checkpoints"


def manager(workdir: str, *, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.LatestN(keep),
        enable_async_checkpointing=not read_only,
        read_only=read_only,
        create=not read_only,
    )
    handlers = {"state": ocp.StandardCheckpointHandler(),
                "data_iter": grain.checkpoint.CheckpointHandler()}  # fmt: skip
    return ocp.CheckpointManager(_ckpt_dir(workdir), options=options, item_handlers=handlers)


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
    """The workdir as an ``epath.Path``: a remote URI (``gs://bucket/run``, any ``scheme://``)
    unchanged, so that reads and writes go to that file system; a local path made absolute
    (orbax wants absolute paths)."""
    text = os.fspath(workdir)
    if "://" in text:
        return epath.Path(text.rstrip("/"))
    return epath.Path(text).absolute()


def _ckpt_dir(workdir: str) -> str:
    return str(workdir_path(workdir) / "checkpoints")


def save(mgr: ocp.CheckpointManager, step: int, state, data_iter=None, *, force: bool = False):
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    mgr.save(step, args=ocp.args.Composite(**items), force=force)


class CheckpointMismatch(ValueError):
    """The checkpoint in a workdir does not fit the model of the config."""


class CheckpointDamaged(ValueError):
    """A checkpoint cannot be read (a truncated, missing or garbled file). The message is one line
    naming the damaged step(s), the cause and how to go on; ``step`` and ``cause`` (the innermost
    error's first line) are set for a single damaged step."""

    def __init__(self, message: str, step: int | None = None, cause: str | None = None):
        super().__init__(message)
        self.step, self.cause = step, cause


def restore(mgr: ocp.CheckpointManager, abstract_state, data_iter=None, *, step: int | None = None,
            describe: str = "the config's model", set_aside: bool = False):  # fmt: skip
    """Restore into the structure, shapes and shardings of ``abstract_state``; the data iterator,
    if given, is restored in place. Returns the state.

    ``step`` None: the newest intact checkpoint. A damaged newer one (any read error other than a
    model mismatch) is skipped with one warning line naming it and its cause; if no checkpoint
    is intact, :class:`CheckpointDamaged` names them all. ``set_aside`` (a resuming training run):
    a damaged step that an older intact one replaced is moved to ``<workdir>/damaged_checkpoints/``
    so that the run can save that step again (it is moved only once an older step has restored,
    so a failure that is not the checkpoint's, which would fail for every step, moves nothing).
    ``step`` given: that step only; damaged, it raises :class:`CheckpointDamaged`.
    :class:`CheckpointMismatch` (a checkpoint of another model) is raised as it is."""
    if step is not None:
        return _restore_step(mgr, step, abstract_state, data_iter, describe)
    steps = sorted(mgr.all_steps(), reverse=True)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {mgr.directory}")
    damaged: list[CheckpointDamaged] = []
    for s in steps:
        try:
            state = _restore_step(mgr, s, abstract_state, data_iter, describe)
        except CheckpointDamaged as e:
            damaged.append(e)
            continue
        for d in damaged:
            moved = _set_aside(mgr, d.step) if set_aside else None
            where = f"; moved to {moved}" if moved else ""
            log.warning("checkpoint %s/%d is damaged (%s); using step %d, the newest intact "
                        "checkpoint%s", mgr.directory, d.step, d.cause, s, where)  # fmt: skip
        if set_aside and damaged:
            mgr.reload()
        return state
    listed = "; ".join(f"step {d.step}: {d.cause}" for d in damaged)
    raise CheckpointDamaged(f"no intact checkpoint in {mgr.directory} ({listed}); to start the "
                            f"run again, delete or move {mgr.directory}")  # fmt: skip


def _restore_step(mgr: ocp.CheckpointManager, step: int, abstract_state, data_iter, describe: str):
    """Restore ``step``; any failure to read it but a model mismatch raises
    :class:`CheckpointDamaged` (``.step``, ``.cause``: the innermost error's first line), agreed
    by every process (each reads its own shards, so one may fail where another does not)."""
    try:
        _check_compatible(mgr, step, abstract_state, describe)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        saved_iter = (epath.Path(mgr.directory) / str(step) / "data_iter").exists()
        if data_iter is not None and not saved_iter:
            # Written without one (convert's import, an initial state): the data starts afresh.
            log.warning("checkpoint %s/%d has no data-iterator state: the data order starts from "
                        "the beginning", mgr.directory, step)  # fmt: skip
        elif data_iter is not None:
            own = _iterator_state_from_other_process_count(mgr, step)
            if own is None:
                items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
            else:
                data_iter.set_state(own)
        state, cause = mgr.restore(step, args=ocp.args.Composite(**items))["state"], None
    except CheckpointMismatch:
        raise
    except Exception as e:  # whatever the read error (TensorStore, JSON, OS), the message names it
        state, cause = None, _innermost(e)
    if jax.process_count() > 1:
        failed = multihost_utils.process_allgather(np.int32(cause is not None))
        if cause is None and np.any(failed):
            cause = f"unreadable in process {int(np.argmax(failed))}"
    if cause is not None:
        raise CheckpointDamaged(
            f"checkpoint {mgr.directory}/{step} is damaged ({cause}); saved steps: "
            f"{sorted(mgr.all_steps())}: restore another step, or delete {mgr.directory}/{step} "
            "to use the newest intact one",
            step=step,
            cause=cause,
        )
    return state


def _innermost(error: BaseException, limit: int = 300) -> str:
    """``Type: first line`` of the innermost exception of a chain (where the cause is: orbax
    wraps a read error in several layers and a long TensorStore spec), at most ``limit`` chars."""
    for _ in range(32):
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    first = (str(error).strip().splitlines() or [""])[0]
    text = f"{type(error).__name__}: {first}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _set_aside(mgr: ocp.CheckpointManager, step: int) -> str | None:
    """Move a damaged step out of the checkpoints to ``<workdir>/damaged_checkpoints/<step>``
    (``<step>-1``, ``-2``, ... if taken), in process 0 while the others wait; returns where
    (process 0) or None."""
    target = None
    if jax.process_index() == 0:
        target = epath.Path(mgr.directory).parent / DAMAGED_DIR / str(step)
        n = 0
        while target.exists():
            n += 1
            target = target.parent / f"{step}-{n}"
        target.parent.mkdir(parents=True, exist_ok=True)
        (epath.Path(mgr.directory) / str(step)).rename(target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"didiff_jax: set aside damaged checkpoint {step}")
    return None if target is None else str(target)


def _iterator_state_from_other_process_count(mgr: ocp.CheckpointManager, step: int):
    """The data-iterator state for this process when the checkpoint was written by another
    number of processes (None when it was written by as many as there are now).

    grain saves one ``process_<i>-of-<P>.json`` per process. Process i of P reads blocks i, i + P,
    ... of B / P consecutive examples (``pipeline.train_dataset``), so its position ``next_index``
    counts global batches and is the same in every process and for every P: any file gives the
    position of a run with another number of processes."""
    folder = epath.Path(mgr.directory) / str(step) / "data_iter"
    P, p = jax.process_count(), jax.process_index()
    if not folder.exists() or (folder / f"process_{p}-of-{P}.json").exists():
        return None
    saved = sorted(folder.glob("process_*-of-*.json"))
    states = [json.loads(f.read_text()) for f in saved]
    if not states:
        return None
    positions = {s.get("next_index") for s in states}
    if any(set(s) != {"next_index"} for s in states) or len(positions) != 1:
        raise ValueError(
            f"{folder}: data-iterator states {[f.name for f in saved]} cannot be carried over to "
            f"{P} processes (expected one equal 'next_index' in each, got {states})"
        )
    return states[0]


def _check_compatible(mgr, step: int, abstract_state, describe: str) -> None:
    """Compare the saved tree (paths and shapes) with the expected one before restoring."""
    meta = mgr.item_metadata(step)
    saved = meta["state"] if meta is not None and "state" in meta else None
    if saved is None:
        return
    # Paths as 'a/b/0/c' on both sides: the metadata tree has dicts where the state has tuples.
    want = {path_str(p): tuple(x.shape) for p, x in
            jax.tree_util.tree_leaves_with_path(abstract_state)}  # fmt: skip
    have = {path_str(p): tuple(getattr(x, "shape", ())) for p, x in
            jax.tree_util.tree_leaves_with_path(saved)}  # fmt: skip
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    shapes = [f"{k}: checkpoint {have[k]}, model {want[k]}" for k in sorted(set(want) & set(have))
              if have[k] != want[k]]  # fmt: skip
    if missing or unexpected or shapes:
        lines = [f"checkpoint {mgr.directory}/{step} does not match {describe}:"]
        for title, items in (("missing in checkpoint", missing), ("not in model", unexpected),
                             ("shape mismatch", shapes)):  # fmt: skip
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:10])
                             + (" ..." if len(items) > 10 else ""))  # fmt: skip
        raise CheckpointMismatch("\n".join(lines))


_HELD: dict[str, list[int]] = {}
"""This process's workdir locks: lock file -> [file descriptor (-1: not process 0), depth]."""


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
    """Hold ``<workdir>/.lock`` while a training run uses the workdir: one run per workdir.

    Two runs on one workdir would delete each other's checkpoints and interleave their metrics, so
    a second run fails at once with :class:`~didiff_jax.checks.InputError` naming the workdir and
    the holder (its pid, host and start time, which the holder writes into the file). The lock is
    an exclusive ``fcntl.flock``: the OS releases it when its process ends, killed or not, so a
    killed run leaves no stale lock (the file stays, unlocked, and the next run takes it over).

    Only process 0 of a multi-process run takes it (the others share the workdir by design); the
    outcome is broadcast, so that every process fails together. Re-entrant within a process
    (``train_and_evaluate`` holds it around ``train`` and ``evaluate``). A remote workdir
    (``gs://...``) is not locked: ``flock`` needs a local file system."""
    if "://" in os.fspath(workdir):
        yield
        return
    path = os.path.join(str(workdir_path(workdir)), LOCK_FILE)
    if path not in _HELD:
        fd, holder = _acquire(path) if jax.process_index() == 0 else (-1, "")
        ok = fd is not None
        if jax.process_count() > 1:  # every process learns process 0's outcome
            ok = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
        if not ok:
            where = f"workdir {workdir_path(workdir)} is in use by another training run"
            if jax.process_index() != 0:
                raise checks.InputError(f"{where} (see process 0's message)")
            raise checks.InputError(f"{where} ({holder}; lock file {path}): one run per workdir; "
                                    "wait for that run to end or stop it, or choose another "
                                    "--workdir")  # fmt: skip
        _HELD[path] = [fd, 0]
    _HELD[path][1] += 1
    try:
        yield
    finally:
        _release(path)


def _acquire(path: str) -> tuple[int | None, str]:
    """(descriptor of the locked file, "") or (None, the holder's description)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 1000, 0).decode(errors="replace").strip() or "holder unknown"
        os.close(fd)
        return None, holder
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
    return fd, ""


def _release(path: str) -> None:
    """Leave one level of :func:`workdir_lock`; the outermost one unlocks and closes the file."""
    held = _HELD[path]
    held[1] -= 1
    if held[1] == 0:
        del _HELD[path]
        if held[0] >= 0:
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])  # the file stays: removing it could race with a run that opened it


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    if jax.process_index() == 0:
        path = workdir_path(workdir) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """The config of a config file, ``path.py[:variant]`` (``get_config(variant or None)``).

    A missing file raises :class:`~didiff_jax.checks.MissingInputError`; what ``get_config``
    raises (a ``ValueError`` or ``KeyError`` for an unknown variant) propagates."""
    path, _, arg = str(spec).partition(":")
    if not pathlib.Path(path).is_file():
        raise checks.MissingInputError(
            f"no such config file {path!r} (expected configs/<name>.py[:variant])"
        )
    module_spec = importlib.util.spec_from_file_location("_didiff_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def check_run_dir(workdir: str, step: int | None = None) -> None:
    """Fail early, saying what a run directory holds, for a missing or foreign ``workdir``
    (:class:`~didiff_jax.checks.MissingInputError`)."""
    if "://" in workdir:  # remote (gs://): orbax reports what is missing
        return
    root = pathlib.Path(workdir)
    expected = (f"expected a run directory written by `python -m didiff_jax.main --workdir "
                f"{workdir}`: {CONFIG_FILE} and checkpoints/<step>/")  # fmt: skip
    if not root.is_dir():
        raise checks.MissingInputError(f"{workdir} does not exist; {expected}")
    if not (root / CONFIG_FILE).is_file():
        found = sorted(p.name for p in root.iterdir())[:8]
        raise checks.MissingInputError(f"{workdir} is not a didiff_jax run (no {CONFIG_FILE}; "
                                       f"found {found}); {expected}")  # fmt: skip
    steps = sorted(int(p.name) for p in (root / "checkpoints").glob("*") if p.name.isdigit())
    if not steps:
        raise checks.MissingInputError(f"{workdir} has {CONFIG_FILE} but no checkpoint: "
                                       f"{expected} (has the run saved its first checkpoint yet?)")  # fmt: skip
    if step is not None and step not in steps:
        raise checks.MissingInputError(
            f"{workdir} has no checkpoint of step {step}; saved steps: {steps}"
        )


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = workdir_path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{workdir} is not a didiff_jax run directory: {CONFIG_FILE} is missing "
            "(expected config.json and checkpoints/ written by `python -m didiff_jax.main`)"
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def describe(config: ml_collections.ConfigDict, workdir: str) -> str:
    """'this config's model {...} (the run was written with model {...})' for mismatch errors."""
    text = f"this config's model {config.model.to_dict()}"
    try:
        saved = read_config(workdir).model.to_dict()
    except (FileNotFoundError, ValueError, AttributeError):
        return text
    return text + (
        f"; the run in {workdir} was written with model {saved}"
        if saved != config.model.to_dict()
        else ""
    )
