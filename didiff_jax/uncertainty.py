"""Uncertainty metrics as the field reports them: OOD detection, selective prediction and
calibration (with temperature scaling). The corruption errors (mCE) and CARD's paired t-test are in
:mod:`didiff_jax.uncertainty_stats`.

Host-side and numpy only (no JAX, no scipy): every function takes numpy arrays (or anything
``np.asarray`` accepts) of a whole evaluation set and returns floats, numpy arrays or dicts, so the
evaluator can call them after gathering predictions. All arithmetic is float64.

Conventions (the same everywhere in this module):

* **OOD detection**: an OOD *score* is "higher = more likely out-of-distribution", and the OOD
  samples are the **positive** class (Hendrycks & Gimpel 2017 report AUROC, AUPR-Out (OOD
  positive) and AUPR-In (in-distribution positive, score negated); FPR at 95% TPR is the fraction
  of in-distribution samples flagged as OOD at the threshold that catches 95% of the OOD ones).
  Turn a confidence into an OOD score by negating it: ``-max_probability(probs)``;
  ``predictive_entropy``, ``disagreement`` and ``mutual_information`` already are OOD scores.
* **Ties** never depend on input order: AUROC gives half credit to tied in/out pairs (the
  Mann-Whitney U statistic, equal to the trapezoidal area under the ROC curve); AUPR and FPR@TPR
  move the threshold over distinct score values only (tied samples enter together, as in
  scikit-learn); the risk-coverage curve is the expectation under a uniformly random order within
  each group of tied confidences.
* **Argmax ties** go to the lower class index (``np.argmax``), as in ``didiff_jax.metrics``.
* Entropies and NLL are in nats. ``eps = 1e-12`` floors a probability inside a log (NLL), as in
  ``didiff_jax.metrics``.
* **Calibration bins** are ``ECE_NUM_BINS = 15`` equal-width, right-closed bins ``((m-1)/M, m/M]``
  on the top-1 confidence (Guo et al. 2017), identical to ``didiff_jax.metrics``.

Sample-based scores take the S predictions a stochastic classifier makes for each of B images,
either as class ids, int ``[S, B]`` (DiDiCM's sampled labels), or as per-sample class probabilities,
float ``[S, B, K]`` (e.g. ADD's or CARD's per-sample label vectors mapped to the simplex). Class-id
samples are treated as one-hot probability vectors, so both forms share one definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

ECE_NUM_BINS = 15
"""Default number of equal-width confidence bins for the ECE (the standard since Guo et al. 2017)."""

NLL_EPS = 1e-12
"""Floor on a probability inside ``log`` (same as ``didiff_jax.metrics``)."""

DEFAULT_COVERAGES = (0.9, 0.95)
"""Coverages at which ``selective_prediction_metrics`` reports the selective accuracy."""


# ----------------------------------------------------------------------------------------------
# Input checks and small helpers
# ----------------------------------------------------------------------------------------------


def _scores_1d(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)  # [N]
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite values")
    return a


def _probs_2d(probs: ArrayLike) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty [B, K] array, got shape {p.shape}")
    return p


def _labels_1d(labels: ArrayLike, batch: int, num_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (batch,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be int [{batch}], got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return y.astype(np.int64)


def _entropy(p: np.ndarray) -> np.ndarray:
    """``-sum_k p_k log p_k`` over the last axis, with ``0 log 0 = 0`` (nats)."""
    logp = np.log(np.where(p > 0, p, 1.0))
    return -np.sum(p * logp, axis=-1)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of [B, K] logits; ``-inf`` entries (zero probability) are allowed."""
    m = np.max(z, axis=-1, keepdims=True)  # [B, 1]
    shifted = z - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def _tie_groups(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) positions of the runs of equal values in a sorted array."""
    n = sorted_values.shape[0]
    new = np.empty(n, dtype=bool)
    new[0] = True
    new[1:] = sorted_values[1:] != sorted_values[:-1]
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n)
    return starts, ends


# ----------------------------------------------------------------------------------------------
# OOD detection (OOD = positive, higher score = more OOD)
# ----------------------------------------------------------------------------------------------


def _ranks_average(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing their average rank (as in Mann-Whitney)."""
    order = np.argsort(values, kind="stable")
    starts, ends = _tie_groups(values[order])
    avg = (starts + 1 + ends) / 2.0  # [G] mean of the ranks start+1 .. end
    group = np.repeat(np.arange(starts.size), ends - starts)  # [N] group of each sorted position
    ranks = np.empty(values.shape[0], dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def auroc(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """Area under the ROC curve for separating OOD (positive) from in-distribution samples.

    ``AUROC = P(s_out > s_in) + 0.5 P(s_out = s_in)`` over independent pairs, computed exactly from
    the Mann-Whitney U statistic with average ranks for ties; equals the trapezoidal area under the
    ROC curve (scikit-learn's ``roc_auc_score``). 0.5 is chance, 1.0 perfect separation.

    Args:
      scores_in: [N_in] OOD scores of in-distribution samples (higher = more OOD).
      scores_out: [N_out] OOD scores of OOD samples.
    """
    s_in = _scores_1d(scores_in, "scores_in")
    s_out = _scores_1d(scores_out, "scores_out")
    n_in, n_out = s_in.size, s_out.size
    ranks = _ranks_average(np.concatenate([s_in, s_out]))  # [N_in + N_out]
    u_out = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0  # pairs won by OOD, ties count 1/2
    return float(u_out / (n_in * n_out))


def _threshold_counts(s_neg: np.ndarray, s_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when flagging ``score >= t``, for each distinct score t, descending.

    Returns (tp, fp), each [T] cumulative counts; the last entry flags everything.
    """
    scores = np.concatenate([s_neg, s_pos])
    is_pos = np.concatenate([np.zeros(s_neg.size), np.ones(s_pos.size)])
    order = np.argsort(-scores, kind="stable")
    _, ends = _tie_groups(scores[order])
    tp = np.cumsum(is_pos[order])[ends - 1]  # [T]
    fp = ends - tp  # [T]
    return tp, fp


def _average_precision(s_neg: np.ndarray, s_pos: np.ndarray) -> float:
    tp, fp = _threshold_counts(s_neg, s_pos)
    precision = tp / (tp + fp)  # [T]
    recall = tp / s_pos.size  # [T]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def aupr(scores_in: ArrayLike, scores_out: ArrayLike, positive: str = "out") -> float:
    """Area under the precision-recall curve, as average precision (no interpolation).

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds, descending (scikit-learn's
    ``average_precision_score``). It depends on which class is positive and on the class ratio
    (chance level = fraction of positives), hence both variants of Hendrycks & Gimpel (2017):

    * ``positive="out"`` (AUPR-Out): OOD samples are positive, flagged when their score is high.
    * ``positive="in"`` (AUPR-In): in-distribution samples are positive, ranked by ``-score``.

    Args:
      scores_in: [N_in] OOD scores of in-distribution samples (higher = more OOD).
      scores_out: [N_out] OOD scores of OOD samples.
      positive: ``"out"`` or ``"in"``.
    """
    s_in = _scores_1d(scores_in, "scores_in")
    s_out = _scores_1d(scores_out, "scores_out")
    if positive == "out":
        return _average_precision(s_in, s_out)
    if positive == "in":
        return _average_precision(-s_out, -s_in)
    raise ValueError(f"positive must be 'out' or 'in', got {positive!r}")


def fpr_at_tpr(scores_in: ArrayLike, scores_out: ArrayLike, tpr: float = 0.95) -> float:
    """False-positive rate at the threshold that catches a fraction ``tpr`` of the OOD samples.

    Samples with ``score >= t`` are flagged as OOD. ``t`` is the highest distinct score at which
    the true-positive rate (fraction of OOD samples flagged) reaches ``tpr``; the result is the
    fraction of in-distribution samples flagged at that ``t`` ("FPR95" for ``tpr=0.95``). Equal to
    the first point with ``TPR >= tpr`` on scikit-learn's ``roc_curve(drop_intermediate=False)``.
    Lower is better.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    s_in = _scores_1d(scores_in, "scores_in")
    s_out = _scores_1d(scores_out, "scores_out")
    tp, fp = _threshold_counts(s_in, s_out)
    idx = int(np.argmax(tp / s_out.size >= tpr))  # first threshold reaching tpr (the last does)
    return float(fp[idx] / s_in.size)


def roc_curve(scores_in: ArrayLike, scores_out: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) [T + 1] of flagging ``score >= t`` as OOD, from (0, 0) over every distinct
    score t, descending, to (1, 1): scikit-learn's ``roc_curve(drop_intermediate=False)``."""
    s_in = _scores_1d(scores_in, "scores_in")
    s_out = _scores_1d(scores_out, "scores_out")
    tp, fp = _threshold_counts(s_in, s_out)
    return np.concatenate([[0.0], fp / s_in.size]), np.concatenate([[0.0], tp / s_out.size])


def ood_metrics(scores_in: ArrayLike, scores_out: ArrayLike) -> dict[str, float]:
    """AUROC, AUPR-Out, AUPR-In and FPR at 95% TPR for one OOD score (higher = more OOD)."""
    return {
        "auroc": auroc(scores_in, scores_out),
        "aupr_out": aupr(scores_in, scores_out, positive="out"),
        "aupr_in": aupr(scores_in, scores_out, positive="in"),
        "fpr_at_95_tpr": fpr_at_tpr(scores_in, scores_out, tpr=0.95),
    }


# ----------------------------------------------------------------------------------------------
# Uncertainty scores from predictions
# ----------------------------------------------------------------------------------------------


def max_probability(probs: ArrayLike) -> np.ndarray:
    """Maximum softmax probability ``max_k p_k`` [B] of probs [B, K]: a *confidence*.

    The MSP baseline of Hendrycks & Gimpel (2017); as an OOD score use ``-max_probability``.
    """
    return np.max(_probs_2d(probs), axis=-1)


def predictive_entropy(probs: ArrayLike) -> np.ndarray:
    """Entropy ``-sum_k p_k log p_k`` [B] (nats, ``0 log 0 = 0``) of probs [B, K]: an OOD score."""
    return _entropy(_probs_2d(probs))


def check_samples(samples: ArrayLike) -> tuple[np.ndarray, bool]:
    """Returns (samples, is_class_ids): int [S, B] class ids or float [S, B, K] probabilities."""
    a = np.asarray(samples)
    if a.ndim == 2:
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"[S, B] samples must be integer class ids, got {a.dtype}")
        if a.size == 0 or a.min() < 0:
            raise ValueError("class-id samples must be non-empty and >= 0")
        return a.astype(np.int64), True
    if a.ndim == 3:
        if a.size == 0:
            raise ValueError("probability samples must be non-empty")
        return a.astype(np.float64), False
    raise ValueError(f"samples must be int [S, B] or float [S, B, K], got shape {a.shape}")


def vote_counts(samples: np.ndarray, is_ids: bool, num_classes: int | None) -> np.ndarray:
    """int [B, K] number of samples whose (arg-max) class is k."""
    ids = samples if is_ids else np.argmax(samples, axis=-1)  # [S, B]
    if num_classes is not None:
        k = num_classes
    else:
        k = int(ids.max()) + 1 if is_ids else samples.shape[-1]
    if ids.max() >= k:
        raise ValueError(f"class ids must be < num_classes={k}")
    b = ids.shape[1]
    flat = (np.arange(b)[None, :] * k + ids).reshape(-1)  # [S * B]
    return np.bincount(flat, minlength=b * k).reshape(b, k)


def vote_histogram(samples: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Fraction of the S samples voting for each class, [B, K] (rows sum to 1).

    Args:
      samples: int [S, B] sampled class ids, or float [S, B, K] per-sample probabilities (each
        sample votes for its arg-max class).
      num_classes: K; defaults to ``max id + 1`` for class ids and to the last axis for
        probabilities.
    """
    a, is_ids = check_samples(samples)
    return vote_counts(a, is_ids, num_classes) / a.shape[0]


def disagreement(samples: ArrayLike) -> np.ndarray:
    """``1 - (votes for the modal class) / S`` per image, [B]: an OOD score in ``[0, 1 - 1/K]``.

    0 when all S samples agree. For [S, B, K] probabilities each sample votes for its arg-max.
    """
    a, is_ids = check_samples(samples)
    counts = vote_counts(a, is_ids, None)  # [B, K]
    return 1.0 - counts.max(axis=-1) / a.shape[0]


def mutual_information(samples: ArrayLike) -> np.ndarray:
    """Mutual information between the label and the sampling randomness, [B] (nats): an OOD score.

    ``MI = H(mean_s p_s) - mean_s H(p_s)`` (the BALD / epistemic term of the decomposition
    "total = aleatoric + epistemic" of Houlsby et al. 2011, Depeweg et al. 2018), for [S, B, K]
    per-sample probabilities. Class-id samples [S, B] are one-hot vectors with ``H(p_s) = 0``, so
    their MI is the entropy of the vote histogram. Clipped at 0 against rounding.
    """
    a, is_ids = check_samples(samples)
    if is_ids:
        return _entropy(vote_counts(a, True, None) / a.shape[0])
    mean = a.mean(axis=0)  # [B, K]
    return np.maximum(_entropy(mean) - _entropy(a).mean(axis=0), 0.0)


# ----------------------------------------------------------------------------------------------
# Selective prediction (risk-coverage)
# ----------------------------------------------------------------------------------------------


def risk_coverage_curve(confidence: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Selective risk at every coverage when keeping the most confident predictions.

    For ``k = 1 .. N`` the classifier keeps the k most confident of N predictions and abstains on
    the rest; ``coverage[k-1] = k / N`` and ``risk[k-1]`` is the error rate among the kept ones
    (Geifman & El-Yaniv 2017). Tied confidences: within a group of m tied predictions with e
    errors, each kept one counts e/m errors, i.e. the curve is the expectation over a uniformly
    random order of the ties. It therefore does not depend on the input order, and at the group
    boundaries it equals the curve of "keep everything with confidence >= t".

    Args:
      confidence: [N] confidence (higher = more likely correct), e.g. ``max_probability``.
      correct: bool [N] whether each prediction is correct.

    Returns:
      (coverage [N], risk [N]).
    """
    conf = _scores_1d(confidence, "confidence")
    ok = np.asarray(correct).reshape(-1)
    if ok.shape != conf.shape:
        raise ValueError(f"correct must have shape {conf.shape}, got {ok.shape}")
    n = conf.size
    order = np.argsort(-conf, kind="stable")
    err = 1.0 - ok[order].astype(np.float64)  # [N] sorted by decreasing confidence
    starts, ends = _tie_groups(conf[order])
    cum = np.cumsum(err)  # [N]
    err_before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)  # [G]
    rate = (cum[ends - 1] - err_before) / (ends - starts)  # [G] error rate inside each tie group
    group = np.repeat(np.arange(starts.size), ends - starts)  # [N]
    kept = np.arange(1, n + 1)  # [N]
    cum_expected = err_before[group] + (kept - starts[group]) * rate[group]  # [N]
    return kept / n, cum_expected / kept


def aurc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Area under the risk-coverage curve, ``mean_k risk(k / N)`` (Geifman et al. 2019). Lower is better."""
    _, risk = risk_coverage_curve(confidence, correct)
    return float(risk.mean())


def optimal_aurc(correct: ArrayLike) -> float:
    """AURC of a perfect confidence ranking (all correct predictions first), in closed form.

    With N predictions of which r are wrong, ``risk(k) = max(0, k - (N - r)) / k``; summed exactly
    (not the continuous approximation ``risk + (1 - risk) log(1 - risk)``).
    """
    ok = np.asarray(correct).reshape(-1).astype(bool)
    n = ok.size
    if n == 0:
        raise ValueError("correct is empty")
    r = n - int(ok.sum())
    k = np.arange(n - r + 1, n + 1)  # coverages with errors kept
    return float(np.sum((k - (n - r)) / k) / n)


def e_aurc(confidence: ArrayLike, correct: ArrayLike) -> float:
    """Excess AURC, ``AURC - AURC_optimal`` (Geifman et al. 2019): the ranking quality alone."""
    return aurc(confidence, correct) - optimal_aurc(correct)


def accuracy_at_coverage(
    confidence: ArrayLike, correct: ArrayLike, coverages: Sequence[float] = DEFAULT_COVERAGES
) -> dict[float, float]:
    """Selective accuracy ``1 - risk`` when keeping the ``ceil(c N)`` most confident predictions.

    Ties at the cut are resolved in expectation, as in ``risk_coverage_curve``.

    Returns:
      ``{c: accuracy}`` for each coverage ``c`` in ``coverages`` (each in (0, 1]).
    """
    _, risk = risk_coverage_curve(confidence, correct)
    n = risk.size
    out = {}
    for c in coverages:
        if not 0.0 < c <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {c}")
        k = max(1, math.ceil(c * n - 1e-9))  # 1e-9: 0.95 * 10000 is not exactly 9500 in floats
        out[float(c)] = float(1.0 - risk[k - 1])
    return out


def selective_prediction_metrics(
    confidence: ArrayLike, correct: ArrayLike, coverages: Sequence[float] = DEFAULT_COVERAGES
) -> dict[str, float]:
    """``aurc``, ``e_aurc`` and ``accuracy_at_coverage_<c>`` (e.g. ``..._0.95``) in one dict."""
    out = {"aurc": aurc(confidence, correct), "e_aurc": e_aurc(confidence, correct)}
    for c, acc in accuracy_at_coverage(confidence, correct, coverages).items():
        out[f"accuracy_at_coverage_{c:g}"] = acc
    return out


# ----------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------


def reliability_bins(
    confidence: ArrayLike, correct: ArrayLike, num_bins: int = ECE_NUM_BINS
) -> dict[str, np.ndarray]:
    """Per-bin statistics of a reliability diagram on equal-width, right-closed bins.

    Bin ``m`` (1-based) is ``((m-1)/M, m/M]``; a confidence of exactly 0 goes into the first.

    Returns:
      ``edges`` [M+1], ``count`` int [M], ``confidence`` [M] (mean confidence), ``accuracy`` [M]
      (fraction correct); the means are NaN in empty bins.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    conf = _scores_1d(confidence, "confidence")
    ok = np.asarray(correct).reshape(-1).astype(np.float64)
    if ok.shape != conf.shape:
        raise ValueError(f"correct must have shape {conf.shape}, got {ok.shape}")
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="left")  # [N]: number of inner edges < conf
    count = np.bincount(idx, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=num_bins) / count
        acc = np.bincount(idx, weights=ok, minlength=num_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def expected_calibration_error(
    probs: ArrayLike, labels: ArrayLike, num_bins: int = ECE_NUM_BINS
) -> float:
    """Top-1 ECE (Guo et al. 2017): ``sum_m (n_m / N) |acc_m - conf_m|`` over ``num_bins`` bins.

    Confidence ``max_k p_k``, prediction ``argmax_k p_k`` (ties to the lower index), equal-width
    right-closed bins on [0, 1] (``reliability_bins``). In [0, 1]; 0 is perfectly calibrated.

    Args:
      probs: [B, K] predicted probabilities.
      labels: int [B] true classes.
      num_bins: M; 15 is the standard.
    """
    p = _probs_2d(probs)
    y = _labels_1d(labels, p.shape[0], p.shape[1])
    bins = reliability_bins(p.max(axis=-1), p.argmax(axis=-1) == y, num_bins)
    full = bins["count"] > 0
    gap = np.abs(bins["accuracy"][full] - bins["confidence"][full])
    return float(np.sum(bins["count"][full] * gap) / p.shape[0])


def negative_log_likelihood(probs: ArrayLike, labels: ArrayLike, eps: float = NLL_EPS) -> float:
    """Mean ``-log max(p_label, eps)`` over the batch (nats); ``eps`` keeps zeros finite."""
    p = _probs_2d(probs)
    y = _labels_1d(labels, p.shape[0], p.shape[1])
    p_label = p[np.arange(p.shape[0]), y]  # [B]
    return float(np.mean(-np.log(np.maximum(p_label, eps))))


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score (Brier 1950): ``mean_i sum_k (p_ik - 1[y_i = k])^2``, in [0, 2]."""
    p = _probs_2d(probs)
    y = _labels_1d(labels, p.shape[0], p.shape[1])
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=-1)))


def _check_logits(logits: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.size == 0:
        raise ValueError(f"logits must be a non-empty [B, K] array, got shape {z.shape}")
    if np.any(np.isnan(z)) or np.any(z == np.inf):
        raise ValueError("logits must not be NaN or +inf (-inf, a zero probability, is allowed)")
    y = _labels_1d(labels, z.shape[0], z.shape[1])
    if not np.all(np.isfinite(z[np.arange(z.shape[0]), y])):
        raise ValueError("the true label's logit must be finite (smooth zero probabilities first)")
    return z, y


def _nll_at_temperature(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    logp = _log_softmax(z / temperature)  # [B, K]
    return float(-np.mean(logp[np.arange(z.shape[0]), y]))


def fit_temperature(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    t_min: float = 0.05,
    t_max: float = 20.0,
    tol: float = 1e-5,
) -> float:
    """Temperature scaling (Guo et al. 2017): the ``T > 0`` minimising the NLL of ``softmax(z / T)``.

    Fit on held-out data, then apply with ``apply_temperature`` (the arg-max, hence accuracy, is
    unchanged). ``logits`` may also be log-probabilities: ``softmax`` is shift-invariant per row, so
    ``log p / T`` gives the same tempered distribution as ``z / T``. ``-inf`` entries (zero
    probability) are allowed except at the true label.

    The NLL is convex in ``beta = 1 / T`` (a log-sum-exp plus a linear term), hence unimodal in
    ``log T``: a golden-section search on ``log T`` over ``[log t_min, log t_max]`` finds the
    minimum to ``tol`` in ``log T`` (relative precision ``tol`` in T) in ~30 NLL evaluations. If
    the minimum lies outside the bracket, the nearest bound is returned.

    Args:
      logits: [B, K] logits or log-probabilities.
      labels: int [B] true classes.
      t_min, t_max: search bracket for T.
      tol: tolerance on ``log T``.

    Returns:
      The fitted temperature T.
    """
    if not 0.0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got {t_min}, {t_max}")
    z, y = _check_logits(logits, labels)

    def f(u: float) -> float:
        return _nll_at_temperature(z, y, math.exp(u))

    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0  # 1 / golden ratio
    lo, hi = math.log(t_min), math.log(t_max)
    a, b = hi - inv_phi * (hi - lo), lo + inv_phi * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > tol:
        if fa <= fb:  # the minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - inv_phi * (hi - lo)
            fa = f(a)
        else:  # the minimum lies in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + inv_phi * (hi - lo)
            fb = f(b)
    u = (lo + hi) / 2.0
    # The bracket ends themselves are never evaluated by the loop: compare them too.
    candidates = [
        (f(u), u),
        (f(math.log(t_min)), math.log(t_min)),
        (f(math.log(t_max)), math.log(t_max)),
    ]
    return float(math.exp(min(candidates)[1]))


def apply_temperature(logits: ArrayLike, temperature: float) -> np.ndarray:
    """``softmax(logits / T)``, [B, K] probabilities (``logits`` may be log-probabilities)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64)
    return np.exp(_log_softmax(z / temperature))
