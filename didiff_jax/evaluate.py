"""Classification evaluation: every configured sampler x number of steps x observation condition.

``evaluate(config, workdir)`` restores the run (EMA parameters when the run keeps them), then for the
clean test set and each ``(corruption, severity)`` of ``config.eval`` computes top-1, top-5, NLL,
expected calibration error and the top-1 after every sampling step, and writes

* ``<workdir>/eval_results.json``: one record per (model, sampler, steps, condition, severity);
* ``<workdir>/plots/``: accuracy against severity, accuracy against steps, the reliability
  diagram of the default sampler, and the class-probability trajectories of a few test images.

``config.eval.baselines``: run directories of trained baselines (e.g. the ResNet of
``fashion_mnist_resnet.py``), each evaluated with its own samplers under this run's conditions;
their records (``"run"`` names the directory) go into the same file and plots.

The batch loop (:func:`eval_batches`: progress lines, global batches, the mask of padded examples),
the restore and the results writer (:func:`write_results`) are shared with the caption evaluator
(``captioning``); the predictors come from ``inference``. Sampler entries are described there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from didiff_jax import checkpoint, inference, metrics, plots, sharding, state
from didiff_jax.data import pipeline

log = logging.getLogger("didiff_jax")

PROGRESS_EVERY_S = 30.0
"""A sweep prints a progress line (batches done, ETA) at most this often, per condition."""


# -------------------------------------------------------------------------- shared pieces


def restored(config: ml_collections.ConfigDict, workdir: str, run: dict | None = None):
    """(graphdef, state, info, mesh): those of ``run`` (the result of ``train.train``, so an
    evaluation after training reuses its state) or restored from ``workdir``."""
    if run is None:
        return state.restore_for_eval(config, workdir)
    return run["graphdef"], run["state"], run["info"], run["mesh"]


def gather(x: jax.Array) -> np.ndarray:
    """A global array on every process as one host numpy array."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def eval_batches(config: ml_collections.ConfigDict, info: pipeline.DataInfo, mesh, source, *,
                 what: str, kind: str | None = None, severity: int = 0
                 ) -> Iterator[tuple[int, dict, np.ndarray]]:  # fmt: skip
    """(index, global batch, mask [B]) over the test split of ``config.eval`` (batch size,
    ``max_examples``), observed under ``(kind, severity)``; ``mask`` marks the real examples (the
    last batch is padded). Prints ``<what>: batch i/n | ETA`` at most every
    :data:`PROGRESS_EVERY_S` seconds."""
    batch_sharding = sharding.batch_sharding(mesh)
    data = pipeline.eval_dataset(config.data, info, split="test", source=source,
                                 global_batch_size=config.eval.get("batch_size", config.batch_size),
                                 kind=kind, severity=severity,
                                 max_examples=config.eval.get("max_examples", 0) or None)  # fmt: skip
    t0 = shown = time.time()
    for i, local in enumerate(data):
        now = time.time()
        if i and jax.process_index() == 0 and now - shown >= PROGRESS_EVERY_S:
            shown, rate = now, i / (now - t0)  # batches/s, compiles included
            print(f"{what}: batch {i}/{len(data)} | ETA {state.hms((len(data) - i) / rate)}",
                  flush=True)  # fmt: skip
        batch = pipeline.to_global(local, batch_sharding)
        yield i, batch, gather(batch["mask"])


def write_results(workdir: str, results: dict) -> checkpoint.epath.Path:
    """``<workdir>/eval_results.json`` (gs:// too); returns the workdir's path."""
    out = checkpoint.workdir_path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_results.json").write_text(json.dumps(results, indent=1))
    return out


# -------------------------------------------------------------------------------- the sweep


def conditions(config: ml_collections.ConfigDict) -> list[tuple[str, int]]:
    """The test conditions: the clean test set (unless ``eval.clean`` is False, e.g. for a model
    trained on corrupted images and tested only on them) and each corruption x severity."""
    out = [("clean", 0)] if config.eval.get("clean", True) else []
    for kind in config.eval.get("corruptions", ()):
        out.extend((kind, int(s)) for s in config.eval.get("severities", (1, 3, 5)))
    return out


def evaluate(
    config: ml_collections.ConfigDict, workdir: str, run: dict | None = None
) -> list[dict]:
    """Run the sweep for this run and for each of ``config.eval.baselines`` (run directories of
    trained baselines, swept under this run's conditions); write one ``eval_results.json`` and the
    plots; return the records."""
    graphdef, train_state, info, mesh = restored(config, workdir, run)
    records, trajectories = sweep(config, graphdef, train_state, info, mesh, run_dir=workdir)
    for baseline_dir in config.eval.get("baselines") or ():
        records += evaluate_baseline(config, baseline_dir)
    if jax.process_index() == 0:
        _write(config, workdir, records, trajectories, info)
    return records


def evaluate_baseline(config: ml_collections.ConfigDict, baseline_dir: str) -> list[dict]:
    """The records of the trained run in ``baseline_dir`` (its own config, model and samplers)
    under ``config``'s evaluation conditions (corruptions, severities, examples, batch size)."""
    try:
        other = checkpoint.read_config(baseline_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"eval.baselines: {baseline_dir} is not a trained run ({e}); train the baseline first, "
            "e.g. python -m didiff_jax.main --config configs/fashion_mnist_resnet.py "
            f"--workdir {baseline_dir}"
        ) from None
    for key in ("corruptions", "severities", "max_examples", "batch_size"):
        if key in config.eval:
            other.eval[key] = config.eval[key]
    graphdef, train_state, info, mesh = state.restore_for_eval(other, baseline_dir)
    records, _ = sweep(other, graphdef, train_state, info, mesh, run_dir=baseline_dir)
    return records


def sweep(config: ml_collections.ConfigDict, graphdef, train_state, info, mesh, *, run_dir: str
          ) -> tuple[list[dict], dict]:  # fmt: skip
    """(records, trajectories) of every sampler x steps x condition of ``config.eval``."""
    params, rest = state.host_params(train_state, config.eval.get("use_ema", True))
    fns = {}
    for entry, steps in inference.sampler_runs(config):
        fn = inference.make_predict_fn(config, graphdef, entry, steps, info.num_classes)
        fns[(inference.sampler_label(entry), steps)] = inference.jit_outputs(fn, "probs", "traj")
    source = pipeline.load_source(config.data, "test")
    key = jax.random.key(config.seed + 2)
    records, trajectories = [], {}
    for kind, severity in conditions(config):
        t0 = time.time()
        totals: dict[tuple, dict] = {}
        per_step: dict[tuple, np.ndarray] = {}
        what = f"eval {config.model.name} {kind} severity {severity}"
        for i, batch, mask in eval_batches(config, info, mesh, source, what=what,
                                           kind=None if kind == "clean" else kind,
                                           severity=severity):  # fmt: skip
            labels = gather(batch["label"])
            for (label, steps), fn in fns.items():
                probs, traj = fn(params, rest, batch["image"], jax.random.fold_in(key, i))
                probs, traj = gather(probs)[mask], gather(traj)  # [S, B, K] from all processes
                readout, _ = inference.calibration_readout(label, probs, traj[:, mask])
                stats = metrics.batch_stats(jnp.asarray(readout), jnp.asarray(labels[mask]))
                stats["top1_correct"] = np.sum(probs.argmax(-1) == labels[mask])  # the answer
                totals[(label, steps)] = metrics.accumulate(totals.get((label, steps)), stats)
                correct = (traj.argmax(-1)[:, mask] == labels[mask][None]).sum(axis=1)  # [S]
                per_step[(label, steps)] = per_step.get((label, steps), 0) + correct
                if i == 0 and kind == "clean":
                    trajectories[(label, steps)] = (traj[:, :4], labels[:4])
        for (label, steps), total in totals.items():
            result = metrics.finalize(total)
            records.append({
                "model": config.model.name, "objective": config.objective.name, "run": run_dir,
                "sampler": label, "steps": steps, "condition": kind, "severity": severity,
                "top1": result["top1"], "top5": result["top5"], "nll": result["nll"],
                "ece": result["ece"], "count": int(result["count"]),
                "top1_per_step": (per_step[(label, steps)] / result["count"]).tolist(),
                "readout": inference.readout_name(label),
                "reliability": result["reliability"],
            })  # fmt: skip
        best = max((r for r in records if r["condition"] == kind and r["severity"] == severity),
                   key=lambda r: r["top1"])  # fmt: skip
        log.info("eval %s/%d: best %s@%s top1 %.4f (%.0fs)", kind, severity, best["sampler"],
                 best["steps"], best["top1"], time.time() - t0)  # fmt: skip
        if jax.process_index() == 0:
            print(f"{what}: best top-1 {best['top1']:.4f} ({best['sampler']}, {best['steps']} "
                  "steps)", flush=True)  # fmt: skip
    return records, trajectories


def _write(config, workdir: str, records: list[dict], trajectories: dict, info) -> None:
    out = write_results(workdir, {"records": records})
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    if len({(r["condition"], r["severity"]) for r in records}) > 1:
        plots.plot_accuracy_vs_severity(records, plot_dir / "accuracy_vs_severity.png")
    clean = [r for r in records if r["condition"] == "clean" and r["run"] == workdir]
    if not clean:  # eval.clean=False: no clean test set for the steps and reliability plots
        return
    plots.plot_accuracy_vs_steps(records, plot_dir / "accuracy_vs_steps.png")
    default = max(clean, key=lambda r: (r["steps"] or 0, r["top1"]))
    plots.plot_reliability(default["reliability"], plot_dir / "reliability.png",
                           title=f"{default['sampler']}, {default['steps']} steps")  # fmt: skip
    for (label, steps), (traj, labels) in trajectories.items():
        if traj.shape[0] > 1:
            plots.plot_trajectory(traj, list(info.class_names),
                                  plot_dir / f"trajectory_{label}_{steps}.png",
                                  true_label=[int(v) for v in labels])  # fmt: skip
