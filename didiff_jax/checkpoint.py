"""Checkpoints with orbax: the train state, the data-iterator state and the run's config.

Layout of a workdir::

    <workdir>/config.json          the resolved config (written once, by process 0)
    <workdir>/checkpoints/<step>/  orbax: ``state`` (params, batch stats, optimizer, EMA, step, RNG)
                                   and ``data_iter`` (the grain iterator position)

Saving is asynchronous (training continues while the previous step is written); the newest
``keep`` checkpoints are kept. Every process calls ``save``/``restore``, as orbax requires; a
checkpoint written by P processes restores in a run of any other number of processes or devices
(arrays are resharded; see ``restore`` for the data iterator). A workdir may be remote
(``gs://bucket/run``): every path goes through ``workdir_path`` (etils.epath), never ``os``.
"""

from __future__ import annotations

import json
import os

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from didiff_jax.sharding import path_str

CONFIG_FILE = "config.json"


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


def restore(mgr: ocp.CheckpointManager, abstract_state, data_iter=None, *, step: int | None = None,
            describe: str = "the config's model"):  # fmt: skip
    """Restore ``step`` (default latest) into the structure, shapes and shardings of
    ``abstract_state``; the data iterator, if given, is restored in place. Returns the state."""
    step = mgr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {mgr.directory}")
    _check_compatible(mgr, step, abstract_state, describe)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
        own = _iterator_state_from_other_process_count(mgr, step)
        if own is None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        else:
            data_iter.set_state(own)
    return mgr.restore(step, args=ocp.args.Composite(**items))["state"]


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


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    if jax.process_index() == 0:
        path = workdir_path(workdir) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))


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
