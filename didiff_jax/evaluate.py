"""Evaluation: every configured sampler x number of steps x observation condition.

``evaluate(config, workdir)`` restores the run (EMA parameters when the run keeps them), then for the
clean test set and each ``(corruption, severity)`` of ``config.eval`` computes top-1, top-5, NLL,
expected calibration error and the top-1 after every sampling step, and writes

* ``<workdir>/eval_results.json``: one record per (model, sampler, steps, condition, severity);
* ``<workdir>/plots/``: accuracy against severity, accuracy against steps, the reliability
  diagram of the default sampler, and the class-probability trajectories of a few test images.

``config.eval.baselines``: run directories of trained baselines (e.g. the ResNet of
``fashion_mnist_resnet.py``), each evaluated with its own samplers under this run's conditions;
their records (``"run"`` names the directory) go into the same file and plots.

``predict(config, workdir, paths)`` classifies image files with the default sampler.

Sampler entries (``config.eval.samplers``), one dict each: ``{"name": "cp", "method": "euler" |
"analytic", "mode": "min", "steps": (1, 2, 4, 8)}``, ``{"name": "cl", "num_chains": 10, ...}``,
``{"name": "onehot", "to_one": "argmax", "guidance_scale": 1.0, "steps": (...)}``,
``{"name": "masked", "steps": (...)}``, ``{"name": "classifier"}`` (the baselines' softmax).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from didiff_jax import checkpoint, metrics, optim, plots, samplers, sharding
from didiff_jax.data import captions, pipeline
from didiff_jax.losses import ctmc_schedule, mask_schedule, onehot_sampling
from didiff_jax.train import hms, host_params, init_train_state

log = logging.getLogger("didiff_jax")

PROGRESS_EVERY_S = 30.0
"""A sweep prints a progress line (batches done, ETA) at most this often, per condition."""


# ------------------------------------------------------------------------------- predictors


def sampler_label(entry: ml_collections.ConfigDict) -> str:
    """A short name for a sampler entry, e.g. ``cp-euler``, ``onehot-argmax-g2.0``."""
    name = entry.name
    if name == "cp":
        return f"cp-{entry.get('method', 'euler')}"
    if name == "cl":
        return f"cl-{entry.get('method', 'euler')}-n{entry.get('num_chains', 10)}"
    if name == "onehot":
        g = entry.get("guidance_scale", 1.0)
        return f"onehot-{entry.get('to_one', 'argmax')}" + (f"-g{g:g}" if g != 1.0 else "")
    return name


def make_predict_fn(config: ml_collections.ConfigDict, graphdef, entry, num_steps: int | None,
                    num_classes: int):  # fmt: skip
    """``fn(params, rest, images, key) -> (probs [B, K], per-step probs [S, B, K])``, jitted."""
    name = entry.name

    def fn(params, rest, images, key):
        model = nnx.merge(graphdef, params, rest)
        if name == "classifier":
            probs = jax.nn.softmax(model(images, train=False), axis=-1)
            return probs, probs[None]
        if name in ("cp", "cl"):

            def score_fn(imgs, x_t, sigma):  # noqa: E306
                return model(imgs, x_t, sigma, train=False)

            common = dict(num_classes=num_classes, num_steps=num_steps, return_trajectory=True,
                          schedule=ctmc_schedule(config.objective),
                          method=entry.get("method", "euler"))  # fmt: skip
            if name == "cp":
                return samplers.cp_sample(
                    score_fn, images, key, mode=entry.get("mode", "min"), **common
                )
            return samplers.cl_sample(score_fn, images, key,
                                      num_chains=entry.get("num_chains", 10), **common)  # fmt: skip
        c = model.encode(images, train=False)
        B = c.shape[0]
        g = entry.get("guidance_scale", 1.0)
        guide = dict(guidance_scale=g, guidance_schedule=entry.get("guidance_schedule", None),
                     null_cond=model.null_condition(B) if g != 1.0 else None)  # fmt: skip
        if name == "onehot":
            return samplers.onehot_sample(
                lambda y, t, cond: model.denoise(y, t, cond, train=False), c, key,
                num_classes=num_classes, num_steps=num_steps, to_one=entry.get("to_one", "argmax"),
                return_trajectory=True, **onehot_sampling(config.objective), **guide,
            )  # fmt: skip
        if name == "masked":
            tokens, probs, traj = samplers.masked_sample(
                lambda x, t, cond: model.denoise(jax.nn.one_hot(x, num_classes), t, cond, train=False),
                c, key, num_classes=num_classes, num_steps=num_steps, return_trajectory=True,
                schedule=mask_schedule(config.objective), **guide,
            )  # fmt: skip
            onehots = jax.nn.one_hot(traj, num_classes)  # decoded label after each step (mask: 0)
            return probs, onehots
        raise ValueError(f"unknown sampler {name!r}: cp, cl, onehot, masked or classifier")

    return jax.jit(fn)


def calibration_readout(label: str, probs, traj) -> tuple[Any, str]:
    """(probabilities, name): what top-5, NLL and ECE are computed from; top-1 is always the
    sampler's answer (``probs``).

    The one-hot chain (ADD) ends with the head re-predicting from its own re-noised argmax: at the
    last step (t = 1/S) it mostly copies it (mean top probability ~0.998 on a trained model), so
    those probabilities say nothing about the uncertainty. Its readout is the first step's, the
    prediction from pure noise (t = 1): the network's posterior over the label given the image.
    The other samplers' final probabilities are already that (CP's chain marginal, CL's vote, the
    masked sampler's draw distribution, the classifier's softmax): ``final``.
    """
    if label.startswith("onehot"):
        return (None if traj is None else traj[0]), "t=1"
    return probs, "final"


def sampler_runs(config: ml_collections.ConfigDict) -> list[tuple[Any, int | None]]:
    """(entry, steps) pairs of the config; steps is None for the classifier."""
    runs = []
    for entry in config.eval.samplers:
        entry = ml_collections.ConfigDict(entry)
        if entry.name == "classifier":
            runs.append((entry, None))
        else:
            runs.extend((entry, int(s)) for s in entry.steps)
    return runs


# ------------------------------------------------------------------------------- restoring


def restore_for_eval(config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None,
                     info: pipeline.DataInfo | None = None):  # fmt: skip
    """(graphdef, state, info, mesh) of the run's checkpoint, without the data iterator."""
    info = pipeline.dataset_info(config.data) if info is None else info
    mesh = sharding.make_mesh(**config.mesh)
    tx, _ = optim.make_optimizer(config.optimizer, 1)  # the state layout does not depend on steps
    graphdef, abstract, _, _ = init_train_state(config, info, tx, mesh,
                                                sharding.parse_rules(config.get("sharding_rules")))  # fmt: skip
    mgr = checkpoint.manager(workdir, read_only=True)
    state = checkpoint.restore(
        mgr, abstract, step=step, describe=checkpoint.describe(config, workdir)
    )
    return graphdef, state, info, mesh


# -------------------------------------------------------------------------------- the sweep


def conditions(config: ml_collections.ConfigDict) -> list[tuple[str, int]]:
    """The test conditions: the clean test set (unless ``eval.clean`` is False, e.g. for a model
    trained on corrupted images and tested only on them) and each corruption x severity."""
    out = [("clean", 0)] if config.eval.get("clean", True) else []
    for kind in config.eval.get("corruptions", ()):
        out.extend((kind, int(s)) for s in config.eval.get("severities", (1, 3, 5)))
    return out


def _gather(x: jax.Array) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def evaluate(
    config: ml_collections.ConfigDict, workdir: str, run: dict | None = None
) -> list[dict]:
    """Run the sweep for this run and for each of ``config.eval.baselines`` (run directories of
    trained baselines, swept under this run's conditions); write one ``eval_results.json`` and the
    plots; return the records."""
    if config.data.name in captions.DATA_NAMES:  # text metrics instead of top-1 (captioning.py)
        from didiff_jax import captioning

        return captioning.evaluate(config, workdir, run=run)
    if run is None:
        graphdef, state, info, mesh = restore_for_eval(config, workdir)
    else:
        graphdef, state, info, mesh = run["graphdef"], run["state"], run["info"], run["mesh"]
    records, trajectories = sweep(config, graphdef, state, info, mesh, run_dir=workdir)
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
    graphdef, state, info, mesh = restore_for_eval(other, baseline_dir)
    records, _ = sweep(other, graphdef, state, info, mesh, run_dir=baseline_dir)
    return records


def sweep(config: ml_collections.ConfigDict, graphdef, state, info, mesh, *, run_dir: str
          ) -> tuple[list[dict], dict]:  # fmt: skip
    """(records, trajectories) of every sampler x steps x condition of ``config.eval``."""
    params, rest = host_params(state, config.eval.get("use_ema", True))
    batch_sharding = sharding.batch_sharding(mesh)
    batch_size = config.eval.get("batch_size", config.batch_size)
    runs = sampler_runs(config)
    fns = {(sampler_label(e), s): make_predict_fn(config, graphdef, e, s, info.num_classes)
           for e, s in runs}  # fmt: skip
    source = pipeline.load_source(config.data, "test")
    max_examples = config.eval.get("max_examples", 0) or None  # 0: the whole split
    key = jax.random.key(config.seed + 2)
    records, trajectories = [], {}
    for kind, severity in conditions(config):
        t0 = time.time()
        totals: dict[tuple, dict] = {}
        per_step: dict[tuple, np.ndarray] = {}
        data = pipeline.eval_dataset(config.data, info, split="test", global_batch_size=batch_size,
                                     kind=None if kind == "clean" else kind, severity=severity,
                                     source=source, max_examples=max_examples)  # fmt: skip
        shown = time.time()
        for i, local in enumerate(data):
            now = time.time()
            if i and jax.process_index() == 0 and now - shown >= PROGRESS_EVERY_S:
                shown, rate = now, i / (now - t0)  # batches/s, compiles included
                print(f"eval {config.model.name} {kind} severity {severity}: batch {i}/{len(data)}"
                      f" | ETA {hms((len(data) - i) / rate)}", flush=True)  # fmt: skip
            batch = pipeline.to_global(local, batch_sharding)
            labels, mask = _gather(batch["label"]), _gather(batch["mask"])
            for (label, steps), fn in fns.items():
                probs, traj = fn(params, rest, batch["image"], jax.random.fold_in(key, i))
                probs, traj = _gather(probs)[mask], _gather(traj)  # [S, B, K] from all processes
                readout, _ = calibration_readout(label, probs, traj[:, mask])
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
                "readout": calibration_readout(label, None, None)[1],
                "reliability": result["reliability"],
            })  # fmt: skip
        best = max((r for r in records if r["condition"] == kind and r["severity"] == severity),
                   key=lambda r: r["top1"])  # fmt: skip
        log.info("eval %s/%d: best %s@%s top1 %.4f (%.0fs)", kind, severity, best["sampler"],
                 best["steps"], best["top1"], time.time() - t0)  # fmt: skip
        if jax.process_index() == 0:
            print(f"eval {config.model.name} {kind} severity {severity}: best top-1 "
                  f"{best['top1']:.4f} ({best['sampler']}, {best['steps']} steps)", flush=True)  # fmt: skip
    return records, trajectories


def _write(config, workdir: str, records: list[dict], trajectories: dict, info) -> None:
    out = checkpoint.workdir_path(workdir)  # gs:// too
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_results.json").write_text(json.dumps({"records": records}, indent=1))
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


# -------------------------------------------------------------------------------- predict


def predict(config: ml_collections.ConfigDict, workdir: str, paths: list[str]) -> list[dict]:
    """Top-5 classes and predictive entropy for each image file, with the default sampler
    (the first configured one at its largest number of steps). Unreadable files are reported.

    The readable files go through ``didiff_jax.load(workdir).predict`` as one batch with its
    default key, so this command and the notebook API give the same probabilities."""
    if config.data.name in captions.DATA_NAMES:  # a sampled caption per image (captioning.py)
        from didiff_jax import captioning

        return captioning.predict(config, workdir, paths)
    from didiff_jax import api  # api builds on this module

    trained = api.load(workdir, config=config, use_ema=config.eval.get("use_ema", True))
    images, results = [], []
    for path in paths:
        try:
            images.append(api.read_image(path, trained.info.image_shape[2]))
            results.append({"path": path})
        except ValueError as e:
            results.append({"path": path, "error": str(e)})
    probs = iter(trained.predict(images) if images else ())
    for r in results:
        if "error" in r:
            print(f"error: {r['error']}", flush=True)
            continue
        p = next(probs)  # [K]
        top = np.argsort(-p)[:5]
        entropy = float(metrics.predictive_entropy(jnp.asarray(p[None]))[0])
        r.update(top5=[(trained.class_names[k], float(p[k])) for k in top], entropy=entropy)
        shown = ", ".join(f"{trained.class_names[k]} {p[k]:.3f}" for k in top)
        print(f"{r['path']}: {shown} | entropy {entropy:.3f} nats", flush=True)
    return results
