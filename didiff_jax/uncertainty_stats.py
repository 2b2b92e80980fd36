"""Statistics over a whole benchmark: the corruption errors (CE, mCE, relative mCE of Hendrycks &
Dietterich 2019) and CARD's per-image paired t-test between the two most-voted classes.

Numpy only (no scipy), float64; conventions as in :mod:`didiff_jax.uncertainty` (samples: class ids
int [S, B] or per-sample probabilities [S, B, K]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from didiff_jax.uncertainty import check_samples, vote_counts

# ----------------------------------------------------------------------------------------------
# Corruption robustness (Hendrycks & Dietterich 2019)
# ----------------------------------------------------------------------------------------------


def _corruption_arrays(
    errors: Mapping[str, ArrayLike], baseline_errors: Mapping[str, ArrayLike]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if set(errors) != set(baseline_errors):
        raise ValueError(
            "errors and baseline_errors must name the same corruptions; only in errors: "
            f"{sorted(set(errors) - set(baseline_errors))}, only in baseline: "
            f"{sorted(set(baseline_errors) - set(errors))}"
        )
    if not errors:
        raise ValueError("no corruptions given")
    out = {}
    for name in errors:
        e = np.asarray(errors[name], dtype=np.float64).reshape(-1)  # [severities]
        e_base = np.asarray(baseline_errors[name], dtype=np.float64).reshape(-1)
        if e.size == 0 or e.shape != e_base.shape:
            raise ValueError(
                f"{name}: need equal, non-empty severity lists, got {e.shape} and {e_base.shape}"
            )
        out[name] = (e, e_base)
    return out


def corruption_errors(
    errors: Mapping[str, ArrayLike], baseline_errors: Mapping[str, ArrayLike]
) -> dict[str, float]:
    """Corruption Error per corruption: ``CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}``.

    Args:
      errors: corruption name -> [5] top-1 error rates of the model at severities 1..5.
      baseline_errors: the same for the baseline model (AlexNet in ImageNet-C; any fixed
        reference model here). Error rates as fractions or percentages, the ratio is the same.
    """
    return {
        name: float(e.sum() / e_base.sum())
        for name, (e, e_base) in _corruption_arrays(errors, baseline_errors).items()
    }


def mean_corruption_error(
    errors: Mapping[str, ArrayLike], baseline_errors: Mapping[str, ArrayLike]
) -> float:
    """mCE (Hendrycks & Dietterich 2019): the mean of ``corruption_errors`` over corruptions.

    1.0 means as robust as the baseline; lower is better (often reported x100, in %).
    """
    return float(np.mean(list(corruption_errors(errors, baseline_errors).values())))


def relative_corruption_errors(
    errors: Mapping[str, ArrayLike],
    clean_error: float,
    baseline_errors: Mapping[str, ArrayLike],
    baseline_clean_error: float,
) -> dict[str, float]:
    """Relative CE per corruption: ``sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} - E^base_clean)``.

    The degradation caused by the corruption relative to the baseline's degradation
    (Hendrycks & Dietterich 2019), so a model that is simply more accurate everywhere does not
    look more robust. Undefined (inf or NaN) when the baseline does not degrade.
    """
    out = {}
    for name, (e, e_base) in _corruption_arrays(errors, baseline_errors).items():
        num = float(np.sum(e - clean_error))
        den = float(np.sum(e_base - baseline_clean_error))
        out[name] = num / den if den != 0.0 else (math.copysign(math.inf, num) if num else math.nan)
    return out


def relative_mean_corruption_error(
    errors: Mapping[str, ArrayLike],
    clean_error: float,
    baseline_errors: Mapping[str, ArrayLike],
    baseline_clean_error: float,
) -> float:
    """Relative mCE: the mean of ``relative_corruption_errors`` over corruptions."""
    rel = relative_corruption_errors(errors, clean_error, baseline_errors, baseline_clean_error)
    return float(np.mean(list(rel.values())))


# ----------------------------------------------------------------------------------------------
# CARD's per-image paired t-test between the two most-voted classes
# ----------------------------------------------------------------------------------------------

_CF_MAX_ITER = 10_000
_CF_EPS = 1e-15
_CF_TINY = 1e-300


def _betacf(a: float, b: float, x: np.ndarray) -> np.ndarray:
    """Continued fraction of the incomplete beta function (modified Lentz), vectorised over x."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = np.where(np.abs(d) < _CF_TINY, _CF_TINY, d)
    d = 1.0 / d
    h = d.copy()
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))  # even step
        d = 1.0 + aa * d
        d = np.where(np.abs(d) < _CF_TINY, _CF_TINY, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < _CF_TINY, _CF_TINY, c)
        d = 1.0 / d
        h = h * d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))  # odd step
        d = 1.0 + aa * d
        d = np.where(np.abs(d) < _CF_TINY, _CF_TINY, d)
        c = 1.0 + aa / c
        c = np.where(np.abs(c) < _CF_TINY, _CF_TINY, c)
        d = 1.0 / d
        delta = d * c
        h = h * delta
        if np.all(np.abs(delta - 1.0) < _CF_EPS):
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: ArrayLike) -> np.ndarray:
    """``I_x(a, b)`` for scalar ``a, b > 0`` and ``x`` in [0, 1] (array), numpy only.

    The continued fraction of Numerical Recipes (sec. 6.4), evaluated on the side of
    ``x = (a + 1) / (a + b + 2)`` where it converges fast (``I_x(a, b) = 1 - I_{1-x}(b, a)``).
    """
    x = np.asarray(x, dtype=np.float64)
    if a <= 0 or b <= 0:
        raise ValueError(f"need a, b > 0, got {a}, {b}")
    if np.any((x < 0) | (x > 1)):
        raise ValueError("x must lie in [0, 1]")
    interior = (x > 0) & (x < 1)
    xi = np.where(interior, x, 0.5)  # placeholders keep the logs finite
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * np.log(xi) + b * np.log1p(-xi)
    )
    front = np.exp(log_front)
    direct = xi < (a + 1.0) / (a + b + 2.0)
    out = np.where(
        direct,
        front * _betacf(a, b, np.where(direct, xi, 0.0)) / a,
        1.0 - front * _betacf(b, a, np.where(direct, 0.0, 1.0 - xi)) / b,
    )
    return np.where(interior, out, np.where(x >= 1.0, 1.0, 0.0))


def student_t_two_sided_pvalue(t: ArrayLike, df: float) -> np.ndarray:
    """``P(|T| >= |t|)`` for Student's t with ``df`` degrees of freedom: ``I_{df/(df+t^2)}(df/2, 1/2)``."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(over="ignore"):
        x = np.where(np.isinf(t), 0.0, df / (df + t * t))
    return regularized_incomplete_beta(df / 2.0, 0.5, x)


def card_paired_ttest(samples: ArrayLike, alpha: float = 0.05) -> dict[str, np.ndarray]:
    """CARD's per-image paired two-sample t-test between the two most-voted classes.

    As in CARD (Han, Zheng & Zhou 2022, "CARD: Classification and Regression Diffusion Models",
    sec. 4 and ``classification/card_classification.py``): for each image, each of the S samples is
    a probability vector ``p_s`` and votes for its arg-max class; ``top1`` and ``top2`` are the two
    classes with the most votes (ties broken by the larger mean probability, then the lower
    class index; CARD's ``argsort`` leaves them unspecified). The test is the paired t-test
    (``scipy.stats.ttest_rel(p[:, top1], p[:, top2])``, two-sided) on the per-sample differences

        d_s = p_s[top1] - p_s[top2],   t = mean(d) / (std(d, ddof=1) / sqrt(S)),   df = S - 1,

    with the two-sided p-value ``P(|T_df| >= |t|)`` computed without scipy
    (``student_t_two_sided_pvalue``). For class-id samples ``p_s`` is one-hot, so
    ``d_s = 1[c_s = top1] - 1[c_s = top2]`` in {-1, 0, 1}. A small p-value rejects "the model is
    equally likely to say top1 and top2": the prediction is confident. CARD counts rejections; an
    image is flagged ``uncertain`` when ``p >= alpha``.

    Degenerate case ``std(d) = 0``: if ``mean(d) != 0`` (e.g. every sample votes top1),
    ``t = +-inf`` and ``p = 0`` (as scipy); if ``d`` is all zeros, ``t = 0`` and ``p = 1``
    (scipy gives NaN).

    Args:
      samples: int [S, B] sampled class ids, or float [S, B, K] per-sample probabilities; S >= 2.
      alpha: significance level (CARD uses 0.05).

    Returns:
      ``top1``, ``top2`` int [B]; ``t``, ``p_value`` float [B]; ``uncertain`` bool [B].
    """
    a, is_ids = check_samples(samples)
    s, b = a.shape[0], a.shape[1]
    if s < 2:
        raise ValueError(f"need at least S = 2 samples, got {s}")
    if is_ids:
        num_classes = max(int(a.max()) + 1, 2)
        counts = vote_counts(a, True, num_classes).astype(np.float64)  # [B, K]
        mean_prob = counts / s  # one-hot samples: mean probability = vote fraction
    else:
        num_classes = a.shape[-1]
        if num_classes < 2:
            raise ValueError("need at least K = 2 classes")
        counts = vote_counts(a, False, num_classes).astype(np.float64)  # [B, K]
        mean_prob = a.mean(axis=0)  # [B, K]
    cls = np.broadcast_to(np.arange(num_classes), counts.shape)
    # lexsort sorts by the last key first: votes desc, then mean probability desc, then index asc.
    order = np.lexsort((cls, -mean_prob, -counts), axis=-1)  # [B, K]
    top1, top2 = order[:, 0], order[:, 1]  # [B]
    if is_ids:
        d = (a == top1[None, :]).astype(np.float64) - (a == top2[None, :])  # [S, B]
    else:
        rows = np.arange(b)
        d = a[:, rows, top1] - a[:, rows, top2]  # [S, B]
    mean = d.mean(axis=0)  # [B]
    std = d.std(axis=0, ddof=1)  # [B]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (std / math.sqrt(s))
    t = np.where(std > 0, t, np.where(mean != 0, np.copysign(np.inf, mean), 0.0))
    p = student_t_two_sided_pvalue(t, s - 1.0)
    return {"top1": top1, "top2": top2, "t": t, "p_value": p, "uncertain": p >= alpha}
