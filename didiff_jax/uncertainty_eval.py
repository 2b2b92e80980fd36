"""The uncertainty evaluation (``config.eval.uncertainty``, the ``:uncertainty`` config variant).

What the field reports for a classifier's uncertainty, for the run and for each of
``config.eval.baselines`` (each with its own default sampler), on the first
``uncertainty.max_examples`` test images:

* **Corruptions** (Fashion-MNIST-C: ``data.corruptions_c``, the 15 ImageNet-C corruptions at
  severities 1-5, seeded): top-1 per corruption and severity, the mean corruption error, mCE and
  relative mCE against the first baseline (Hendrycks & Dietterich 2019), and mCE against chance
  (errors over ``1 - 1/K``, so a run alone has a scale too).
* **OOD detection** against synthetic sets made from the same test images
  (``corruptions_c.ood_images``: ``noise``, ``inverted``, ``flipped``) and, for a run trained on a
  subset of the classes (``data.classes``, the ``heldout`` variant), the other classes' test images
  (``heldout``): AUROC, AUPR-Out/In and FPR at
  95% TPR for the scores ``max_probability`` (negated), ``entropy``, and from
  ``num_samples`` independent draws of the sampler, ``disagreement`` and ``mutual_information``.
* **Selective prediction**: AURC, E-AURC, accuracy at 90% and 95% coverage (confidence: the
  top probability of the calibration readout, ``inference.calibration_readout``).
* **Calibration**: ECE, NLL, Brier before and after temperature scaling; the temperature is
  fitted on the training examples held out from training (``data.holdout``).
* **Per-image uncertainty from samples**: CARD's paired t-test between the two most-voted classes
  of the ``num_samples`` draws (``uncertainty_stats.card_paired_ttest``): the fraction of images
  it flags as uncertain and the accuracy on the flagged and the other images.

Everything goes through ``didiff_jax.load`` (the notebook API): the same preprocessing, sampler and
chunking as ``Trained.predict``. The result is the ``"uncertainty"`` entry of
``<workdir>/eval_results.json``; plots: ``plots/risk_coverage.png``, ``plots/corruptions.png``,
``plots/roc_<ood set>.png``. Corrupted test sets are cached (``uncertainty.cache_dir``, default
``~/.cache/didiff_jax/corruptions_c``): the package takes ~45 s per 1,000 images per severity.
One process only (the API's predictions are local).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from didiff_jax import api, checkpoint, inference, plots, uncertainty, uncertainty_stats
from didiff_jax.checks import InputError
from didiff_jax.data import corruptions_c, pipeline


def cache_dir(u: ml_collections.ConfigDict) -> pathlib.Path:
    default = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
    return pathlib.Path(u.get("cache_dir") or default / "didiff_jax" / "corruptions_c")


def corrupted(images: np.ndarray, name: str, severity: int, seed: int, cache: pathlib.Path
              ) -> np.ndarray:  # fmt: skip
    """``corruptions_c.corrupt_c(images, name, severity, seed)``, read from / written to the
    cache (keyed by the images' bytes, the corruption, severity and seed; written atomically)."""
    digest = hashlib.sha1(images.tobytes() + str(images.shape).encode()).hexdigest()[:16]
    path = cache / f"{digest}_{name}_{severity}_{seed}.npy"
    if path.is_file():
        return np.load(path)
    out = corruptions_c.corrupt_c(images, name, severity, seed)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def _test_images(config: ml_collections.ConfigDict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, H, W, C] and labels [n] of the first ``n`` test examples."""
    source = pipeline.load_source(config.data, "test")
    n = min(n, len(source))
    records = [source[i] for i in range(n)]
    return np.stack([r["image"] for r in records]), np.array([int(r["label"]) for r in records])


def _holdout(config: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray] | None:
    if not config.data.get("holdout", 0):
        return None
    source = pipeline.load_source(config.data, "train")
    records = [source[int(i)] for i in pipeline.holdout_indices(config.data, source)]
    return np.stack([r["image"] for r in records]), np.array([int(r["label"]) for r in records])


class _Predictor:
    """The run's default sampler (or ``uncertainty.sampler``) on uint8 images: the answer's
    probabilities and the calibration readout; and ``num_samples`` class draws from the
    objective's stochastic sampler: DiDiCM's CL chains, ADD's chain with multinomial "to one",
    the default sampler under other keys otherwise (a classifier's draws all agree)."""

    def __init__(self, trained: api.Trained, u: ml_collections.ConfigDict):
        self.trained, self.seed = trained, int(u.get("seed", 0))
        self.entry = trained.sampler_entry(u.get("sampler") or None)
        self.label = inference.sampler_label(self.entry)
        self.num_samples = int(u.get("num_samples", 8))
        self.steps = trained.default_steps(self.entry)
        if trained.objective == "didicm":
            self.draw_entry = {"name": "cl", "num_chains": self.num_samples}
        elif self.entry.name == "onehot":
            self.draw_entry = {**self.entry.to_dict(), "to_one": "multinomial"}
        else:
            self.draw_entry = self.entry.to_dict()
        self.draw_label = inference.sampler_label(ml_collections.ConfigDict(self.draw_entry))

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probs [N, K] of the answer, readout [N, K] for confidence and calibration)."""
        if inference.readout_name(self.label) == "final":  # no per-step probabilities needed
            probs = self.trained.predict(images, sampler=self.entry, key=self.seed)
            return probs, probs
        probs, traj = self.trained.predict(images, sampler=self.entry, key=self.seed,
                                           return_trajectory=True)  # fmt: skip
        readout, _ = inference.calibration_readout(self.label, probs, traj)
        return probs, readout

    def draws(self, images: np.ndarray) -> np.ndarray:
        """int [S, N]: ``num_samples`` sampled classes per image."""
        S, key = self.num_samples, self.seed + 1
        if self.draw_entry["name"] == "cl":  # one run of S chains: its histogram holds the draws
            votes = self.trained.predict(images, sampler=self.draw_entry, num_steps=self.steps,
                                         key=key)  # fmt: skip
            counts = np.rint(votes * S).astype(int)  # [N, K], rows sum to S
            return np.stack([np.repeat(np.arange(len(c)), c) for c in counts], axis=1)
        return np.stack([
            self.trained.predict(images, sampler=self.draw_entry, num_steps=self.steps,
                                 key=key + s).argmax(-1)
            for s in range(S)
        ])  # fmt: skip


def _calibration(readout: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"ece": uncertainty.expected_calibration_error(readout, labels),
            "nll": uncertainty.negative_log_likelihood(readout, labels),
            "brier": uncertainty.brier_score(readout, labels)}  # fmt: skip


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(p, uncertainty.NLL_EPS))


def assess(trained: api.Trained, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The uncertainty figures of one trained run under ``config.eval.uncertainty`` (and the
    run's ``data.holdout`` for the temperature); curves under ``"curves"`` (for the plots)."""
    u = config.eval.uncertainty
    t0 = time.time()
    predict = _Predictor(trained, u)
    images, labels = _test_images(config, int(u.get("max_examples", 1000)))
    K = trained.num_classes
    probs, readout = predict(images)
    correct = probs.argmax(-1) == labels  # [N]
    confidence = readout.max(-1)  # [N]
    out: dict[str, Any] = {"run": trained.workdir, "model": trained.config.model.name,
                           "sampler": predict.label, "count": int(len(labels)),
                           "top1": float(correct.mean())}  # fmt: skip
    out["selective"] = uncertainty.selective_prediction_metrics(confidence, correct)
    coverage, risk = uncertainty.risk_coverage_curve(confidence, correct)
    curves: dict[str, Any] = {"risk_coverage": (coverage, risk), "roc": {}}
    calibration = {"before": _calibration(readout, labels), "temperature": None, "after": None}
    held = _holdout(trained.config)
    if held is not None:
        _, held_readout = predict(held[0])
        T = uncertainty.fit_temperature(_log(held_readout), held[1])
        calibration["temperature"] = T
        calibration["after"] = _calibration(uncertainty.apply_temperature(_log(readout), T), labels)
    out["calibration"] = calibration
    draws = predict.draws(images)  # [S, N]
    card = uncertainty_stats.card_paired_ttest(draws)
    flagged = card["uncertain"]
    out["samples"] = {
        "sampler": predict.draw_label,
        "num_samples": predict.num_samples,
        "disagreement": float(uncertainty.disagreement(draws).mean()),
        "mutual_information": float(uncertainty.mutual_information(draws).mean()),
        "card_uncertain_fraction": float(flagged.mean()),
        "accuracy_card_certain": float(correct[~flagged].mean()) if (~flagged).any() else None,
        "accuracy_card_uncertain": float(correct[flagged].mean()) if flagged.any() else None,
    }  # fmt: skip
    scores_in = _ood_scores(readout, draws)
    out["ood"] = {}
    sets = {kind: corruptions_c.ood_images(images, kind, predict.seed)
            for kind in u.get("ood", corruptions_c.OOD_SETS)}  # fmt: skip
    if config.data.get("classes"):  # the test images of the classes the run never saw
        sets["heldout"] = pipeline.held_out_classes(config.data, "test")[: len(images)]
    for kind, other in sets.items():
        _, other_readout = predict(other)
        scores_out = _ood_scores(other_readout, predict.draws(other))
        out["ood"][kind] = {name: uncertainty.ood_metrics(scores_in[name], scores_out[name])
                            for name in scores_in}  # fmt: skip
        curves["roc"][kind] = uncertainty.roc_curve(scores_in["max_probability"],
                                                    scores_out["max_probability"])  # fmt: skip
    cache = cache_dir(u)
    top1 = {}
    for name in u.get("corruptions", corruptions_c.CORRUPTIONS_C):
        top1[name] = []
        for severity in u.get("severities", corruptions_c.SEVERITIES):
            x = corrupted(images, name, int(severity), predict.seed, cache)
            top1[name].append(float((predict(x)[0].argmax(-1) == labels).mean()))
        print(f"uncertainty {out['model']}: {name} top-1 by severity "
              + " ".join(f"{a:.3f}" for a in top1[name]), flush=True)  # fmt: skip
    errors = {name: [1.0 - a for a in accs] for name, accs in top1.items()}
    chance = {name: [1.0 - 1.0 / K] * len(e) for name, e in errors.items()}
    out["corruptions"] = {
        "top1": top1,
        "mean_corruption_error": float(np.mean([np.mean(e) for e in errors.values()])),
        "mce_vs_chance": uncertainty_stats.mean_corruption_error(errors, chance),
        "mce": None, "relative_mce": None, "baseline": None,
    }  # fmt: skip
    out["seconds"] = time.time() - t0
    out["curves"] = curves
    return out


def _ood_scores(readout: np.ndarray, draws: np.ndarray) -> dict[str, np.ndarray]:
    """OOD scores (higher = more OOD) of each image."""
    return {"max_probability": -uncertainty.max_probability(readout),
            "entropy": uncertainty.predictive_entropy(readout),
            "disagreement": uncertainty.disagreement(draws),
            "mutual_information": uncertainty.mutual_information(draws)}  # fmt: skip


def _against(result: dict, baseline: dict) -> None:
    """Fill ``result``'s mCE and relative mCE against ``baseline`` (same corruptions)."""
    errors = {c: [1.0 - a for a in v] for c, v in result["corruptions"]["top1"].items()}
    base = {c: [1.0 - a for a in v] for c, v in baseline["corruptions"]["top1"].items()}
    c = result["corruptions"]
    c["baseline"] = baseline["run"]
    c["mce"] = uncertainty_stats.mean_corruption_error(errors, base)
    c["relative_mce"] = uncertainty_stats.relative_mean_corruption_error(
        errors, 1.0 - result["top1"], base, 1.0 - baseline["top1"]
    )


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """:func:`assess` the run in ``workdir`` and each of ``config.eval.baselines`` (under this
    run's protocol); mCE against the first baseline; merge the results into
    ``<workdir>/eval_results.json`` under ``"uncertainty"`` and plot them."""
    if jax.process_count() > 1:
        raise InputError("the uncertainty evaluation runs in one process: rerun with "
                         "--mode eval without --distributed")  # fmt: skip
    use_ema = config.eval.get("use_ema", True)
    result = assess(api.load(workdir, config=config, use_ema=use_ema), config)
    baselines = []
    for other_dir in config.eval.get("baselines") or ():
        other = checkpoint.read_config(other_dir)
        other.eval.uncertainty = config.eval.uncertainty
        baselines.append(assess(api.load(other_dir, config=other, use_ema=use_ema), other))
    if baselines:
        _against(result, baselines[0])
    runs = [result, *baselines]
    _plot(workdir, runs)
    path = checkpoint.workdir_path(workdir) / "eval_results.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    protocol = {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in config.eval.uncertainty.to_dict().items()}  # fmt: skip
    saved["uncertainty"] = {"protocol": protocol, "holdout": int(config.data.get("holdout", 0)),
                            **_public(result),
                            "baselines": [_public(b) for b in baselines]}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1))
    sel, ood = result["selective"], result["ood"]
    aurocs = " ".join(f"{k} {v['max_probability']['auroc']:.3f}" for k, v in ood.items())
    print(f"uncertainty {result['model']}: AURC {sel['aurc']:.4f} | AUROC (max prob) {aurocs} | "
          f"mean corruption error {result['corruptions']['mean_corruption_error']:.3f} "
          f"({result['seconds']:.0f}s)", flush=True)  # fmt: skip
    return saved["uncertainty"]


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "curves"}


def _plot(workdir: str, runs: list[dict]) -> None:
    out = checkpoint.workdir_path(workdir) / "plots"
    names = [f"{r['model']} ({r['sampler']})" for r in runs]
    plots.plot_risk_coverage({n: r["curves"]["risk_coverage"] for n, r in zip(names, runs, strict=True)},
                             out / "risk_coverage.png")  # fmt: skip
    plots.plot_corruption_bars({n: r["corruptions"]["top1"] for n, r in zip(names, runs, strict=True)},
                               out / "corruptions.png")  # fmt: skip
    for kind in runs[0]["curves"]["roc"]:
        plots.plot_roc({n: r["curves"]["roc"][kind] for n, r in zip(names, runs, strict=True)},
                       out / f"roc_{kind}.png", title=f"OOD: {kind} (max probability)")  # fmt: skip
