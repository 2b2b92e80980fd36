"""Evaluation: every configured sampler x number of steps x observation condition.

``evaluate(config, workdir)`` restores the run (EMA parameters when the run keeps them), then for the
clean test set and each ``(corruption, severity)`` of ``config.eval`` computes top-1, top-5, NLL,
expected calibration error and the top-1 after every sampling step, and writes

* ``<workdir>/eval_results.json``: one record per (model, sampler, steps, condition, severity);
* ``<workdir>/plots/``: accuracy against severity, accuracy against steps, the reliability
  diagram of the default sampler, and the class-probability trajectories of a few test images.

``predict(config, workdir, paths)`` classifies image files with the default sampler.

Sampler entries (``config.eval.samplers``), one dict each: ``{"name": "cp", "method": "euler" |
"analytic", "mode": "min", "steps": (1, 2, 4, 8)}``, ``{"name": "cl", "num_chains": 10, ...}``,
``{"name": "onehot", "to_one": "argmax", "guidance_scale": 1.0, "steps": (...)}``,
``{"name": "masked", "steps": (...)}``, ``{"name": "classifier"}`` (the baselines' softmax).
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from didiff_jax import checkpoint, metrics, optim, plots, samplers, sharding
from didiff_jax.data import pipeline
from didiff_jax.losses import ctmc_schedule, gaussian_schedule
from didiff_jax.train import host_params, init_train_state

log = logging.getLogger("didiff_jax")


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
                schedule=gaussian_schedule(config.objective), return_trajectory=True, **guide,
            )  # fmt: skip
        if name == "masked":
            tokens, probs, traj = samplers.masked_sample(
                lambda x, t, cond: model.denoise(jax.nn.one_hot(x, num_classes), t, cond, train=False),
                c, key, num_classes=num_classes, num_steps=num_steps, return_trajectory=True,
                **guide,
            )  # fmt: skip
            onehots = jax.nn.one_hot(traj, num_classes)  # decoded label after each step (mask: 0)
            return probs, onehots
        raise ValueError(f"unknown sampler {name!r}: cp, cl, onehot, masked or classifier")

    return jax.jit(fn)


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
    out = [("clean", 0)]
    for kind in config.eval.get("corruptions", ()):
        out.extend((kind, int(s)) for s in config.eval.get("severities", (1, 3, 5)))
    return out


def _gather(x: jax.Array) -> np.ndarray:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def evaluate(
    config: ml_collections.ConfigDict, workdir: str, run: dict | None = None
) -> list[dict]:
    """Run the sweep; write ``eval_results.json`` and the plots; return the records."""
    if run is None:
        graphdef, state, info, mesh = restore_for_eval(config, workdir)
    else:
        graphdef, state, info, mesh = run["graphdef"], run["state"], run["info"], run["mesh"]
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
        for i, local in enumerate(data):
            batch = pipeline.to_global(local, batch_sharding)
            labels, mask = _gather(batch["label"]), _gather(batch["mask"])
            for (label, steps), fn in fns.items():
                probs, traj = fn(params, rest, batch["image"], jax.random.fold_in(key, i))
                probs, traj = _gather(probs)[mask], np.asarray(jax.device_get(traj))
                stats = metrics.batch_stats(jnp.asarray(probs), jnp.asarray(labels[mask]))
                totals[(label, steps)] = metrics.accumulate(totals.get((label, steps)), stats)
                correct = (traj.argmax(-1)[:, mask] == labels[mask][None]).sum(axis=1)  # [S]
                per_step[(label, steps)] = per_step.get((label, steps), 0) + correct
                if i == 0 and kind == "clean":
                    trajectories[(label, steps)] = (traj[:, :4], labels[:4])
        for (label, steps), total in totals.items():
            result = metrics.finalize(total)
            records.append({
                "model": config.model.name, "objective": config.objective.name, "sampler": label,
                "steps": steps, "condition": kind, "severity": severity,
                "top1": result["top1"], "top5": result["top5"], "nll": result["nll"],
                "ece": result["ece"], "count": int(result["count"]),
                "top1_per_step": (per_step[(label, steps)] / result["count"]).tolist(),
                "reliability": result["reliability"],
            })  # fmt: skip
        best = max((r for r in records if r["condition"] == kind and r["severity"] == severity),
                   key=lambda r: r["top1"])  # fmt: skip
        log.info("eval %s/%d: best %s@%s top1 %.4f (%.0fs)", kind, severity, best["sampler"],
                 best["steps"], best["top1"], time.time() - t0)  # fmt: skip
        print(f"eval {kind} severity {severity}: best top-1 {best['top1']:.4f} "
              f"({best['sampler']}, {best['steps']} steps)", flush=True)  # fmt: skip
    if jax.process_index() == 0:
        _write(config, workdir, records, trajectories, info)
    return records


def _write(config, workdir: str, records: list[dict], trajectories: dict, info) -> None:
    out = pathlib.Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_results.json").write_text(json.dumps({"records": records}, indent=1))
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    if len({(r["condition"], r["severity"]) for r in records}) > 1:
        plots.plot_accuracy_vs_severity(records, plot_dir / "accuracy_vs_severity.png")
    plots.plot_accuracy_vs_steps(records, plot_dir / "accuracy_vs_steps.png")
    clean = [r for r in records if r["condition"] == "clean"]
    default = max(clean, key=lambda r: (r["steps"] or 0, r["top1"]))
    plots.plot_reliability(default["reliability"], plot_dir / "reliability.png",
                           title=f"{default['sampler']}, {default['steps']} steps")  # fmt: skip
    for (label, steps), (traj, labels) in trajectories.items():
        if traj.shape[0] > 1:
            plots.plot_trajectory(traj, list(info.class_names),
                                  plot_dir / f"trajectory_{label}_{steps}.png",
                                  true_label=[int(v) for v in labels])  # fmt: skip


# -------------------------------------------------------------------------------- predict


def _read_image(path: str, info) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if info.image_shape[2] == 1 else "RGB")
            im = im.resize(info.image_shape[:2][::-1], Image.Resampling.BILINEAR)
            image = np.asarray(im, np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from None
    image = image.reshape(info.image_shape)
    return (image - np.asarray(info.mean, np.float32)) / np.asarray(info.std, np.float32)


def predict(config: ml_collections.ConfigDict, workdir: str, paths: list[str]) -> list[dict]:
    """Top-5 classes and predictive entropy for each image file, with the default sampler
    (the first configured one at its largest number of steps). Unreadable files are reported."""
    graphdef, state, info, mesh = restore_for_eval(config, workdir)
    params, rest = host_params(state, config.eval.get("use_ema", True))
    entry = ml_collections.ConfigDict(config.eval.samplers[0])
    steps = max(entry.steps) if "steps" in entry else None
    fn = make_predict_fn(config, graphdef, entry, steps, info.num_classes)
    results = []
    for i, path in enumerate(paths):
        try:
            image = _read_image(path, info)
        except ValueError as e:
            print(f"error: {e}", flush=True)
            results.append({"path": path, "error": str(e)})
            continue
        probs, _ = fn(
            params, rest, jnp.asarray(image[None]), jax.random.fold_in(jax.random.key(0), i)
        )
        p = np.asarray(probs[0])
        top = np.argsort(-p)[:5]
        entropy = float(metrics.predictive_entropy(jnp.asarray(p[None]))[0])
        results.append({"path": path, "top5": [(info.class_names[k], float(p[k])) for k in top],
                        "entropy": entropy})  # fmt: skip
        shown = ", ".join(f"{info.class_names[k]} {p[k]:.3f}" for k in top)
        print(f"{path}: {shown} | entropy {entropy:.3f} nats", flush=True)
    return results
