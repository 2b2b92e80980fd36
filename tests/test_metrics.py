"""Tests for didiff_jax.metrics against straightforward numpy re-implementations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from didiff_jax import metrics


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _ref(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15, eps: float = 1e-12) -> dict:
    """Loop-and-sort numpy reference; ties broken towards the lower index (stable sort).

    Bin edges are rounded to the dtype of ``probs``, as in ``batch_stats``, so a confidence that lands
    exactly on an edge (quantised probabilities) goes to the same bin.
    """
    edge_dtype = np.asarray(probs).dtype
    probs = np.asarray(probs, np.float64)
    n = len(labels)
    k5 = min(5, probs.shape[1])
    top1 = top5 = 0
    nll = 0.0
    bin_n = np.zeros(num_bins)
    bin_conf = np.zeros(num_bins)
    bin_corr = np.zeros(num_bins)
    for p, y in zip(probs, labels, strict=True):
        order = np.argsort(-p, kind="stable")  # descending, ties -> lower index first
        top1 += int(order[0] == y)
        top5 += int(y in order[:k5])
        nll += -np.log(max(p[y], eps))
        c = p.max()
        m = 0
        for j in range(1, num_bins):  # right-closed bins ((m-1)/M, m/M]
            if c > np.asarray(j / num_bins, edge_dtype):
                m = j
        bin_n[m] += 1
        bin_conf[m] += c
        bin_corr[m] += int(order[0] == y)
    ece = sum(
        abs(bin_corr[m] / bin_n[m] - bin_conf[m] / bin_n[m]) * bin_n[m] / n
        for m in range(num_bins)
        if bin_n[m] > 0
    )
    return {
        "top1": top1 / n,
        "top5": top5 / n,
        "nll": nll / n,
        "ece": ece,
        "bin_n": bin_n,
        "bin_conf": bin_conf,
        "bin_corr": bin_corr,
    }


def _check(probs, labels, num_bins=15):
    got = metrics.finalize(
        metrics.accumulate(
            None, metrics.batch_stats(jnp.asarray(probs), jnp.asarray(labels), num_bins=num_bins)
        )
    )
    ref = _ref(np.asarray(probs), np.asarray(labels), num_bins)
    assert got["count"] == len(labels)
    np.testing.assert_allclose(got["top1"], ref["top1"])
    np.testing.assert_allclose(got["top5"], ref["top5"])
    np.testing.assert_allclose(got["nll"], ref["nll"], rtol=1e-5)
    np.testing.assert_allclose(got["ece"], ref["ece"], rtol=1e-5, atol=1e-6)
    rel = got["reliability"]
    np.testing.assert_array_equal(rel["count"], ref["bin_n"])
    for m in range(num_bins):
        if ref["bin_n"][m] == 0:
            assert rel["confidence"][m] is None and rel["accuracy"][m] is None
        else:
            np.testing.assert_allclose(
                rel["confidence"][m], ref["bin_conf"][m] / ref["bin_n"][m], rtol=1e-5
            )
            np.testing.assert_allclose(rel["accuracy"][m], ref["bin_corr"][m] / ref["bin_n"][m])
    return got


@pytest.mark.parametrize(
    "batch,num_classes", [(64, 10), (1, 10), (37, 3), (20, 1), (50, 5), (13, 100)]
)
def test_matches_numpy_random(batch, num_classes):
    rng = np.random.default_rng(batch * 1000 + num_classes)
    probs = _softmax(rng.normal(size=(batch, num_classes)) * 3).astype(np.float32)
    labels = rng.integers(0, num_classes, size=batch)
    _check(probs, labels)


def test_ties_break_towards_lower_index():
    # Quantised probabilities: many exact ties, including ties at the label.
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4, size=(200, 8)).astype(np.float32)  # [B, K]
    raw[:, 0] += (raw.sum(-1) == 0).astype(np.float32)
    probs = raw / raw.sum(-1, keepdims=True)
    labels = rng.integers(0, 8, size=200)
    _check(probs, labels, num_bins=10)
    # Uniform distribution: the label is top-1 only if it is class 0, top-5 only if < 5.
    probs = np.full((8, 8), 1 / 8, np.float32)
    got = metrics.finalize(metrics.batch_stats(probs, np.arange(8)))
    assert got["top1"] == pytest.approx(1 / 8)
    assert got["top5"] == pytest.approx(5 / 8)


def test_top5_with_three_classes_is_one():
    rng = np.random.default_rng(1)
    probs = _softmax(rng.normal(size=(30, 3)))
    labels = rng.integers(0, 3, size=30)
    got = metrics.finalize(metrics.batch_stats(probs, labels))
    assert got["top5"] == 1.0


def test_nll_eps_keeps_zero_probability_finite():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]], np.float32)
    got = metrics.finalize(metrics.batch_stats(probs, np.array([1, 0]), eps=1e-12))
    assert np.isfinite(got["nll"])
    np.testing.assert_allclose(got["nll"], (-np.log(1e-12) - np.log(0.5)) / 2, rtol=1e-5)


def test_ece_zero_for_perfectly_calibrated_bins():
    # In bin m, every example has confidence c_m (the bin centre, made representable by 20 examples
    # per bin with round(c_m * 20) correct): accuracy == confidence in every bin -> ECE == 0.
    num_bins, per_bin, num_classes = 10, 20, 10
    probs, labels = [], []
    for m in range(1, num_bins):  # confidences 0.15 .. 0.95 (>= 1/K, so they can be a max prob)
        c = (m + 0.5) / num_bins
        n_correct = round(c * per_bin)
        assert abs(n_correct / per_bin - c) < 1e-9
        rest = (1 - c) / (num_classes - 1)
        p = np.full(num_classes, rest)
        p[0] = c
        for i in range(per_bin):
            probs.append(p)
            labels.append(0 if i < n_correct else 1)
    probs = np.asarray(probs, np.float32)
    got = metrics.finalize(metrics.batch_stats(probs, np.asarray(labels), num_bins=num_bins))
    assert got["ece"] < 1e-5
    rel = got["reliability"]
    assert rel["count"][0] == 0 and all(c == per_bin for c in rel["count"][1:])
    np.testing.assert_allclose(rel["confidence"][1:], rel["accuracy"][1:], atol=1e-6)
    assert rel["ece"] == got["ece"]
    assert len(rel["bin_edges"]) == num_bins + 1


def test_ece_overconfident_is_gap():
    # All examples at confidence 0.9, accuracy 0.5 -> ECE = 0.4.
    probs = np.tile(np.array([0.9, 0.1], np.float32), (10, 1))
    labels = np.array([0, 1] * 5)
    got = metrics.finalize(metrics.batch_stats(probs, labels))
    np.testing.assert_allclose(got["ece"], 0.4, rtol=1e-5)


def test_accumulate_halves_equals_one_pass():
    rng = np.random.default_rng(2)
    probs = _softmax(rng.normal(size=(41, 7)) * 2).astype(np.float32)
    labels = rng.integers(0, 7, size=41)
    whole = metrics.finalize(metrics.accumulate(None, metrics.batch_stats(probs, labels)))
    total = None
    for sl in (slice(0, 20), slice(20, 41)):
        total = metrics.accumulate(total, metrics.batch_stats(probs[sl], labels[sl]))
    halves = metrics.finalize(total)
    for key in ("top1", "top5", "nll", "ece", "count"):
        np.testing.assert_allclose(halves[key], whole[key], rtol=1e-6)
    assert halves["reliability"]["count"] == whole["reliability"]["count"]
    assert total["count"].dtype == np.int64 and total["nll"].dtype == np.float64


def test_accumulate_rejects_mismatch():
    a = metrics.batch_stats(np.full((2, 3), 1 / 3), np.array([0, 1]), num_bins=5)
    b = metrics.batch_stats(np.full((2, 3), 1 / 3), np.array([0, 1]), num_bins=6)
    with pytest.raises(ValueError, match="shape"):
        metrics.accumulate(metrics.accumulate(None, a), b)


def test_mask_excludes_padding():
    rng = np.random.default_rng(3)
    probs = _softmax(rng.normal(size=(16, 5))).astype(np.float32)
    labels = rng.integers(0, 5, size=16)
    mask = np.arange(16) < 11
    masked = metrics.finalize(metrics.batch_stats(probs, labels, mask=mask))
    sliced = metrics.finalize(metrics.batch_stats(probs[:11], labels[:11]))
    for key in ("top1", "top5", "nll", "ece", "count"):
        np.testing.assert_allclose(masked[key], sliced[key], rtol=1e-6)


def test_jit_and_shape_polymorphism():
    fn = jax.jit(metrics.batch_stats, static_argnames=("num_bins",))
    rng = np.random.default_rng(4)
    for batch in (1, 9):
        probs = _softmax(rng.normal(size=(batch, 6))).astype(np.float32)
        labels = rng.integers(0, 6, size=batch)
        jitted = fn(probs, labels, num_bins=8)
        eager = metrics.batch_stats(probs, labels, num_bins=8)
        assert set(jitted) == set(eager)
        for k in eager:
            np.testing.assert_allclose(np.asarray(jitted[k]), np.asarray(eager[k]), rtol=1e-6)
        assert jitted["ece_bin_count"].shape == (8,)
        assert jitted["count"].dtype == jnp.int32


def test_finalize_empty_raises():
    total = metrics.batch_stats(np.full((2, 3), 1 / 3), np.array([0, 1]), mask=np.zeros(2, bool))
    with pytest.raises(ValueError, match="zero"):
        metrics.finalize(total)


def test_predictive_entropy():
    rng = np.random.default_rng(5)
    probs = _softmax(rng.normal(size=(6, 4))).astype(np.float32)
    probs[0] = [1, 0, 0, 0]
    probs[1] = 0.25
    ref = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0), -1)
    got = np.asarray(jax.jit(metrics.predictive_entropy)(probs))
    assert got.shape == (6,)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert got[0] == 0.0
    np.testing.assert_allclose(got[1], np.log(4), rtol=1e-6)
