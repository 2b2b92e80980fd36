"""Classification metrics from predicted class probabilities.

Evaluation runs per batch inside ``jax.jit`` and may be spread over many batches and hosts, so the
per-batch function ``batch_stats`` returns SUMS, never means: sums add across batches (``accumulate``,
on host) and across devices/hosts (``jax.lax.psum`` or a host all-reduce), and only ``finalize``
divides. Means of means would be wrong whenever batches differ in size (the last, padded batch).

Metrics:

* top-1 / top-5 accuracy (top-``min(5, K)``). Ties are broken towards the lower class index, exactly
  as ``jnp.argmax`` and ``jax.lax.top_k`` do: the label's rank is the number of classes with a higher
  probability plus the number of equal-probability classes with a lower index.
* NLL: mean of ``-log(max(p_label, eps))`` (nats); ``eps`` keeps a zero probability finite.
* ECE (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the top-1 confidence
  ``max_k p_k`` falls into one of ``num_bins`` equal-width bins on [0, 1], right-closed as in the
  paper (bin ``m`` is ``((m-1)/M, m/M]``; a confidence of exactly 0 goes into the first bin);
  ``ECE = sum_m |acc_m - conf_m| * n_m / N``.
* ``predictive_entropy``: entropy of the predictive distribution, in nats.

Typical use::

    stats_fn = jax.jit(metrics.batch_stats)
    total = None
    for images, labels in loader:
        total = metrics.accumulate(total, stats_fn(predict(images), labels))
    results = metrics.finalize(total)   # {"top1", "top5", "nll", "ece", "count", "reliability"}
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_SUM_KEYS = (
    "count",
    "top1_correct",
    "top5_correct",
    "nll",
    "ece_bin_count",
    "ece_bin_conf",
    "ece_bin_correct",
)


def bin_edges(num_bins: int) -> np.ndarray:
    """The ``num_bins + 1`` equal-width confidence-bin edges on [0, 1] used for the ECE."""
    return np.linspace(0.0, 1.0, num_bins + 1)


@functools.partial(jax.jit, static_argnames=("num_bins",))
def batch_stats(
    probs: jax.Array,
    labels: jax.Array,
    *,
    num_bins: int = 15,
    eps: float = 1e-12,
    mask: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Per-batch sums of the classification statistics (jit-compatible, any batch size).

    Args:
      probs: [B, K] predicted class probabilities (rows summing to 1).
      labels: int [B] true classes in ``[0, K)``.
      num_bins: number of equal-width confidence bins for the ECE (a static Python int).
      eps: floor on the label probability inside the log, so a zero probability gives a finite NLL.
      mask: optional bool [B]; ``False`` rows (padding in the last batch) contribute nothing.

    Jitted itself (``num_bins`` static), so host-side eager calls compile once per shape instead of
    dispatching op by op; inside an outer ``jax.jit`` / ``shard_map`` it simply inlines.

    Returns:
      A dict of sums: ``count``, ``top1_correct``, ``top5_correct`` (int32 scalars), ``nll``
      (float scalar), ``ece_bin_count`` (int32 [num_bins]), ``ece_bin_conf`` (float [num_bins],
      sum of the top-1 confidence), ``ece_bin_correct`` (int32 [num_bins]). Sums, so they add over
      batches and hosts; ``finalize`` turns them into means.
    """
    if not isinstance(num_bins, int | np.integer) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive Python int (static), got {num_bins!r}")
    probs = jnp.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be [B, K], got shape {probs.shape}")
    if not jnp.issubdtype(probs.dtype, jnp.floating):
        probs = probs.astype(jnp.float32)
    labels = jnp.asarray(labels).astype(jnp.int32)  # [B]
    num_classes = probs.shape[-1]
    k5 = min(5, num_classes)

    valid = jnp.ones(labels.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)  # [B]
    w_int = valid.astype(jnp.int32)  # [B]

    # Rank of the label with ties towards the lower index (== argmax / lax.top_k). O(B K), no sort.
    p_label = jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]  # [B]
    idx = jnp.arange(num_classes)[None, :]  # [1, K]
    ahead = (probs > p_label[:, None]) | ((probs == p_label[:, None]) & (idx < labels[:, None]))
    rank = jnp.sum(ahead, axis=-1)  # [B]
    top1 = rank < 1  # [B]
    top5 = rank < k5  # [B]

    nll = -jnp.log(jnp.maximum(p_label, eps))  # [B]

    conf = jnp.max(probs, axis=-1)  # [B]
    # Right-closed bins ((m-1)/M, m/M]: the bin index is the number of interior edges below conf.
    inner = jnp.asarray(bin_edges(num_bins)[1:-1], probs.dtype)  # [M-1]
    bin_idx = jnp.sum(conf[:, None] > inner[None, :], axis=-1)  # [B] in [0, M)
    in_bin = (bin_idx[:, None] == jnp.arange(num_bins)[None, :]) & valid[:, None]  # [B, M]

    return {
        "count": jnp.sum(w_int),
        "top1_correct": jnp.sum(top1 & valid, dtype=jnp.int32),
        "top5_correct": jnp.sum(top5 & valid, dtype=jnp.int32),
        "nll": jnp.sum(jnp.where(valid, nll, 0.0)),
        "ece_bin_count": jnp.sum(in_bin, axis=0, dtype=jnp.int32),  # [M]
        "ece_bin_conf": jnp.sum(jnp.where(in_bin, conf[:, None], 0.0), axis=0),  # [M]
        "ece_bin_correct": jnp.sum(in_bin & top1[:, None], axis=0, dtype=jnp.int32),  # [M]
    }


def _to_host(x: Any) -> np.ndarray:
    """Device or numpy value -> numpy, widened (int64 / float64) so long accumulations stay exact."""
    a = np.asarray(jax.device_get(x))
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        return a.astype(np.int64)
    return a.astype(np.float64)


def accumulate(total: Mapping[str, Any] | None, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Add one batch's sums (from ``batch_stats``) to a running total, on host in numpy.

    ``total=None`` starts a new total. Integers accumulate in int64 and floats in float64, so counts
    stay exact however many batches are added. Returns a new dict; neither input is modified.
    """
    batch_np = {k: _to_host(v) for k, v in batch.items()}
    if total is None:
        return batch_np
    if set(total) != set(batch_np):
        raise ValueError(f"key mismatch: total has {sorted(total)}, batch has {sorted(batch_np)}")
    out = {}
    for k, v in batch_np.items():
        t = _to_host(total[k])
        if t.shape != v.shape:
            raise ValueError(
                f"shape mismatch for {k!r}: {t.shape} vs {v.shape} (different num_bins?)"
            )
        out[k] = t + v
    return out


def finalize(total: Mapping[str, Any]) -> dict[str, Any]:
    """Turn accumulated sums into metrics.

    Returns:
      ``top1``, ``top5``, ``nll`` (means over all examples), ``ece`` (``sum_m |acc_m - conf_m| *
      n_m / N``), ``count`` (N, an int) and ``reliability``: a dict with per-bin lists
      ``confidence`` (mean top-1 confidence), ``accuracy`` (top-1 accuracy), ``count``, plus
      ``bin_edges`` (``num_bins + 1`` floats) and ``ece``. Empty bins have ``None`` confidence and
      accuracy (JSON-safe, unlike NaN). Plain Python numbers throughout, ready for ``json.dump``.
    """
    missing = [k for k in _SUM_KEYS if k not in total]
    if missing:
        raise ValueError(f"total is missing keys {missing}")
    t = {k: _to_host(total[k]) for k in _SUM_KEYS}
    n = int(t["count"])
    if n <= 0:
        raise ValueError("cannot finalize metrics over zero examples")

    bin_n = t["ece_bin_count"].astype(np.float64)  # [M]
    bin_conf = t["ece_bin_conf"]  # [M]
    bin_correct = t["ece_bin_correct"].astype(np.float64)  # [M]
    # |acc_m - conf_m| * n_m == |correct_m - conf_sum_m|: no division, empty bins give 0.
    ece = float(np.sum(np.abs(bin_correct - bin_conf)) / n)
    nonempty = bin_n > 0
    safe_n = np.where(nonempty, bin_n, 1.0)
    mean_conf = bin_conf / safe_n
    mean_acc = bin_correct / safe_n
    reliability = {
        "confidence": [float(c) if e else None for c, e in zip(mean_conf, nonempty, strict=True)],
        "accuracy": [float(a) if e else None for a, e in zip(mean_acc, nonempty, strict=True)],
        "count": [int(c) for c in t["ece_bin_count"]],
        "bin_edges": [float(e) for e in bin_edges(len(bin_n))],
        "ece": ece,
    }
    return {
        "top1": float(t["top1_correct"]) / n,
        "top5": float(t["top5_correct"]) / n,
        "nll": float(t["nll"]) / n,
        "ece": ece,
        "count": n,
        "reliability": reliability,
    }


def predictive_entropy(probs: jax.Array) -> jax.Array:
    """Entropy ``-sum_k p_k log p_k`` (nats) of each row of ``probs`` [B, K] -> [B].

    Zero probabilities contribute 0 (``0 log 0 = 0``). A measure of the model's uncertainty, e.g. to
    see how the reverse chain sharpens its belief step by step.
    """
    probs = jnp.asarray(probs)
    return jnp.sum(jax.scipy.special.entr(probs), axis=-1)  # [B]
