"""Checkpoints with orbax: the train state, the data-iterator state and the run's config.

Layout of a workdir::

    <workdir>/config.json          the resolved config (written once, by process 0)
    <workdir>/checkpoints/<step>/  orbax: ``state`` (params, batch stats, optimizer, EMA, step, RNG)
                                   and ``data_iter`` (the grain iterator position)

Saving is asynchronous (training continues while the previous step is written); the newest
``keep`` checkpoints are kept. Every process calls ``save``/``restore``, as orbax requires.
"""

from __future__ import annotations

import json
import pathlib

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
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


def _ckpt_dir(workdir: str) -> str:
    # orbax wants absolute paths; gs:// paths pass through unchanged.
    return (
        workdir.rstrip("/") + "/checkpoints"
        if "://" in workdir
        else str(pathlib.Path(workdir).absolute() / "checkpoints")
    )


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
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    return mgr.restore(step, args=ocp.args.Composite(**items))["state"]


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
        path = pathlib.Path(workdir) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config.to_json_best_effort(indent=2, sort_keys=True))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = pathlib.Path(workdir) / CONFIG_FILE
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
