"""Uncertainty metrics: hand-computed values, and scikit-learn / scipy on random inputs with ties."""

import math

import numpy as np
import pytest
from scipy import special, stats
from sklearn import metrics as skm

from didiff_jax import uncertainty as U
from didiff_jax import uncertainty_stats as US


def tied_scores(seed: int, n_in: int = 300, n_out: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """In/out OOD scores rounded to a coarse grid, so that many values tie within and across sets."""
    rng = np.random.default_rng(seed)
    s_in = np.round(rng.normal(0.0, 1.0, n_in), 1)
    s_out = np.round(rng.normal(0.8, 1.0, n_out), 1)
    return s_in, s_out


# ------------------------------------------------------------------------------------------------
# OOD detection
# ------------------------------------------------------------------------------------------------


def test_auroc_hand_computed_with_ties():
    # Pairs (in, out): (0,1) win, (0,2) win, (1,1) tie = 1/2, (1,2) win -> 3.5 / 4.
    assert U.auroc([0, 1], [1, 2]) == pytest.approx(0.875)
    assert U.auroc([0, 0], [0, 0]) == pytest.approx(0.5)
    assert U.auroc([0, 1], [2, 3]) == 1.0
    assert U.auroc([2, 3], [0, 1]) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ood_metrics_match_sklearn(seed):
    s_in, s_out = tied_scores(seed)
    y = np.r_[np.zeros(s_in.size), np.ones(s_out.size)]  # OOD is the positive class
    s = np.r_[s_in, s_out]
    assert U.auroc(s_in, s_out) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert U.aupr(s_in, s_out) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert U.aupr(s_in, s_out, positive="in") == pytest.approx(
        skm.average_precision_score(1 - y, -s), abs=1e-12
    )
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    for target in (0.5, 0.8, 0.95):
        expected = fpr[np.argmax(tpr >= target)]
        assert U.fpr_at_tpr(s_in, s_out, target) == pytest.approx(expected, abs=1e-12)
    got = U.ood_metrics(s_in, s_out)
    assert set(got) == {"auroc", "aupr_out", "aupr_in", "fpr_at_95_tpr"}


def test_ood_metrics_ignore_input_order():
    s_in, s_out = tied_scores(3)
    rng = np.random.default_rng(0)
    a = U.ood_metrics(s_in, s_out)
    b = U.ood_metrics(rng.permutation(s_in), rng.permutation(s_out))
    assert a == b


def test_fpr_at_tpr_hand_computed():
    # Flag score >= 2: TPR 4/4, FPR 2/4 (in-scores 2, 3). Flag >= 3: TPR 3/4 < 0.95.
    assert U.fpr_at_tpr([0, 1, 2, 3], [2, 3, 4, 5], 0.95) == pytest.approx(0.5)
    assert U.fpr_at_tpr([0, 1, 2, 3], [2, 3, 4, 5], 0.5) == pytest.approx(0.0)
    assert U.fpr_at_tpr([0, 1], [2, 3]) == 0.0  # perfectly separated


def test_ood_inputs_are_checked():
    with pytest.raises(ValueError, match="empty"):
        U.auroc([], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        U.auroc([np.nan], [1.0])
    with pytest.raises(ValueError, match="positive"):
        U.aupr([0.0], [1.0], positive="ood")


# ------------------------------------------------------------------------------------------------
# Scores
# ------------------------------------------------------------------------------------------------


def test_probability_scores():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(U.max_probability(probs), [1.0, 1 / 3, 0.5])
    np.testing.assert_allclose(U.predictive_entropy(probs), [0.0, math.log(3), math.log(2)])


def test_sample_scores_from_class_ids():
    # S = 4 samples of B = 3 images.
    ids = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 2], [0, 2, 3]])
    np.testing.assert_allclose(U.disagreement(ids), [0.0, 0.5, 0.5])
    np.testing.assert_allclose(U.mutual_information(ids), [0.0, math.log(2), math.log(2)])
    hist = U.vote_histogram(ids, num_classes=5)
    np.testing.assert_allclose(hist[1], [0, 0.5, 0.5, 0, 0])
    np.testing.assert_allclose(hist.sum(-1), 1.0)
    # One-hot probability samples give the same scores as their class ids.
    onehot = np.eye(4)[ids]  # [S, B, K]
    np.testing.assert_allclose(U.disagreement(onehot), U.disagreement(ids))
    np.testing.assert_allclose(U.mutual_information(onehot), U.mutual_information(ids), atol=1e-12)


def test_mutual_information_from_probabilities():
    # Two confident samples that disagree: all the uncertainty is epistemic, MI = log 2.
    disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # [S=2, B=1, K=2]
    # Two identical uniform samples: aleatoric only, MI = 0 although the entropy is log 2.
    agree = np.full((2, 1, 2), 0.5)
    np.testing.assert_allclose(U.mutual_information(disagree), [math.log(2)])
    np.testing.assert_allclose(U.mutual_information(agree), [0.0], atol=1e-15)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=(7, 11))  # [S, B, K]
    mean = p.mean(0)
    expected = stats.entropy(mean, axis=-1) - stats.entropy(p, axis=-1).mean(0)
    np.testing.assert_allclose(U.mutual_information(p), expected, atol=1e-12)


def test_sample_inputs_are_checked():
    with pytest.raises(ValueError, match="integer"):
        U.disagreement(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="shape"):
        U.disagreement(np.zeros(3, int))


# ------------------------------------------------------------------------------------------------
# Selective prediction
# ------------------------------------------------------------------------------------------------


def test_risk_coverage_hand_computed_with_ties():
    conf = [0.9, 0.8, 0.8, 0.1]
    correct = [True, True, False, False]
    cov, risk = U.risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    # k=2 keeps one of the two tied 0.8s: 1/2 an error in expectation.
    np.testing.assert_allclose(risk, [0.0, 0.5 / 2, 1 / 3, 2 / 4])
    # Same curve whatever the order of the tied predictions.
    _, risk_swapped = U.risk_coverage_curve([0.9, 0.8, 0.8, 0.1], [True, False, True, False])
    np.testing.assert_allclose(risk_swapped, risk)
    assert U.aurc(conf, correct) == pytest.approx(np.mean(risk))


def test_risk_coverage_ties_are_the_random_order_expectation():
    rng = np.random.default_rng(0)
    conf = rng.integers(0, 4, 12).astype(float)
    correct = rng.random(12) < 0.6
    _, risk = U.risk_coverage_curve(conf, correct)
    # Average the plain sorted curve over random tie orders (exact expectation up to MC error).
    curves = []
    for _ in range(20_000):
        order = np.lexsort((rng.random(12), -conf))
        err = np.cumsum(~correct[order])
        curves.append(err / np.arange(1, 13))
    np.testing.assert_allclose(risk, np.mean(curves, axis=0), atol=0.01)


def test_aurc_of_a_perfect_ranking_is_the_closed_form():
    rng = np.random.default_rng(0)
    n, errors = 10_000, 800
    correct = np.ones(n, bool)
    correct[rng.choice(n, errors, replace=False)] = False
    conf = np.where(correct, 1.0 + rng.random(n), rng.random(n))  # every correct one first
    exact = sum((k - (n - errors)) / k for k in range(n - errors + 1, n + 1)) / n
    assert U.aurc(conf, correct) == pytest.approx(exact, rel=1e-12)
    assert U.optimal_aurc(correct) == pytest.approx(exact, rel=1e-12)
    assert U.e_aurc(conf, correct) == pytest.approx(0.0, abs=1e-12)
    r = errors / n  # Geifman et al.'s continuous approximation
    assert exact == pytest.approx(r + (1 - r) * math.log(1 - r), abs=1e-4)
    # A random ranking has AURC close to the overall risk, so a positive E-AURC.
    random_conf = rng.random(n)
    assert U.aurc(random_conf, correct) == pytest.approx(r, abs=0.01)
    assert U.e_aurc(random_conf, correct) > 0.03


def test_accuracy_at_coverage_hand_computed():
    conf = np.linspace(1.0, 0.0, 20)  # decreasing, no ties
    correct = np.ones(20, bool)
    correct[-2:] = False  # the two least confident are wrong
    got = U.accuracy_at_coverage(conf, correct, (0.9, 0.95, 1.0))
    assert got == pytest.approx({0.9: 1.0, 0.95: 18 / 19, 1.0: 0.9})
    metrics = U.selective_prediction_metrics(conf, correct)
    assert set(metrics) == {
        "aurc",
        "e_aurc",
        "accuracy_at_coverage_0.9",
        "accuracy_at_coverage_0.95",
    }
    assert metrics["e_aurc"] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------------


def test_ece_zero_for_a_perfectly_calibrated_construction():
    # For each confidence c, 20 predictions of which exactly 20 c are right.
    probs, labels = [], []
    for c in (0.55, 0.6, 0.75, 0.9, 1.0):
        n_right = round(20 * c)
        for i in range(20):
            probs.append([c, 1 - c])
            labels.append(0 if i < n_right else 1)
    assert U.expected_calibration_error(np.array(probs), np.array(labels)) == pytest.approx(
        0.0, abs=1e-12
    )


def test_ece_hand_computed_and_against_a_loop():
    probs = np.array([[0.9, 0.1]] * 10)
    labels = np.zeros(10, int)
    assert U.expected_calibration_error(probs, labels) == pytest.approx(0.1)  # conf 0.9, acc 1
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(4, 0.5), size=500)
    y = rng.integers(0, 4, 500)
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    for m in range(15):
        lo, hi = m / 15, (m + 1) / 15
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs((pred[in_bin] == y[in_bin]).mean() - conf[in_bin].mean())
    assert U.expected_calibration_error(p, y) == pytest.approx(ece, abs=1e-12)
    bins = U.reliability_bins(conf, pred == y)
    assert bins["count"].sum() == 500 and bins["edges"].shape == (16,)


def test_reliability_bins_are_right_closed():
    bins = U.reliability_bins([0.0, 0.5, 0.5000001, 1.0], [True] * 4, num_bins=2)
    np.testing.assert_array_equal(bins["count"], [2, 2])  # 0.5 is in (0, 0.5]


def test_nll_and_brier_score():
    probs = np.array([[0.5, 0.5, 0.0], [0.1, 0.7, 0.2]])
    labels = np.array([0, 1])
    assert U.negative_log_likelihood(probs, labels) == pytest.approx(
        -(math.log(0.5) + math.log(0.7)) / 2
    )
    assert U.negative_log_likelihood(probs, labels) == pytest.approx(
        skm.log_loss(labels, probs, labels=[0, 1, 2])
    )
    # Zero probability on the label: floored at eps, finite.
    assert U.negative_log_likelihood(probs, np.array([2, 1])) == pytest.approx(
        (-math.log(1e-12) - math.log(0.7)) / 2
    )
    brier = ((0.5**2 + 0.5**2) + (0.1**2 + 0.3**2 + 0.2**2)) / 2
    assert U.brier_score(probs, labels) == pytest.approx(brier)
    with pytest.raises(ValueError, match="labels"):
        U.brier_score(probs, np.array([0, 3]))


def test_temperature_scaling_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, size=(20_000, 10))
    p_true = U.apply_temperature(logits, 2.0)  # labels drawn from softmax(z / 2)
    labels = np.minimum((rng.random((20_000, 1)) > np.cumsum(p_true, axis=1)).sum(1), 9)
    t = U.fit_temperature(logits, labels)
    assert t == pytest.approx(2.0, rel=0.05)
    # Log-probabilities give the same temperature (softmax is shift-invariant per row).
    log_probs = np.log(U.apply_temperature(logits, 1.0))
    assert U.fit_temperature(log_probs, labels) == pytest.approx(t, rel=1e-4)
    # It lowers the held-out NLL and keeps every arg-max.
    before = U.negative_log_likelihood(U.apply_temperature(logits, 1.0), labels)
    after = U.negative_log_likelihood(U.apply_temperature(logits, t), labels)
    assert after < before
    np.testing.assert_array_equal(U.apply_temperature(logits, t).argmax(1), logits.argmax(1))


def test_temperature_scaling_bracket_and_checks():
    logits = np.array([[2.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 1])
    # Always right: the NLL keeps falling as T -> 0, so the lower bound comes back.
    assert U.fit_temperature(logits, labels, t_min=0.1, t_max=10.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="finite"):
        U.fit_temperature(np.array([[0.0, -np.inf]]), np.array([1]))
    with pytest.raises(ValueError, match="temperature"):
        U.apply_temperature(logits, 0.0)


# ------------------------------------------------------------------------------------------------
# Corruption benchmark
# ------------------------------------------------------------------------------------------------


def test_mean_corruption_error_hand_computed():
    errors = {"gaussian_noise": [0.1] * 5, "fog": [0.1, 0.2, 0.3, 0.4, 0.5]}
    base = {"gaussian_noise": [0.2] * 5, "fog": [0.3] * 5}
    ce = US.corruption_errors(errors, base)
    assert ce == pytest.approx({"gaussian_noise": 0.5, "fog": 1.5 / 1.5})
    assert US.mean_corruption_error(errors, base) == pytest.approx(0.75)
    # Relative: (sum_s E - 5 E_clean) / (sum_s E_base - 5 E_base_clean).
    rel = US.relative_corruption_errors(errors, 0.05, base, 0.1)
    assert rel == pytest.approx({"gaussian_noise": 0.25 / 0.5, "fog": 1.25 / 1.0})
    assert US.relative_mean_corruption_error(errors, 0.05, base, 0.1) == pytest.approx(0.875)


def test_mean_corruption_error_checks_names_and_lengths():
    with pytest.raises(ValueError, match="only in errors"):
        US.mean_corruption_error({"fog": [0.1] * 5, "snow": [0.1] * 5}, {"fog": [0.1] * 5})
    with pytest.raises(ValueError, match="severity"):
        US.mean_corruption_error({"fog": [0.1] * 5}, {"fog": [0.1] * 4})


# ------------------------------------------------------------------------------------------------
# CARD paired t-test
# ------------------------------------------------------------------------------------------------


def test_incomplete_beta_and_student_t_match_scipy():
    rng = np.random.default_rng(0)
    for a, b in [(0.5, 0.5), (1.0, 3.0), (2.5, 0.5), (49.5, 0.5), (499.5, 0.5), (30.0, 70.0)]:
        x = np.r_[0.0, 1.0, rng.random(50), 1e-8, 1 - 1e-8]
        np.testing.assert_allclose(
            US.regularized_incomplete_beta(a, b, x), special.betainc(a, b, x), rtol=1e-9, atol=1e-14
        )
    t = np.r_[0.0, 0.1, -0.5, 1.0, 2.0, -3.0, 10.0, 50.0, np.inf, -np.inf]
    for df in (1, 2, 5, 29, 99, 999):
        np.testing.assert_allclose(
            US.student_t_two_sided_pvalue(t, df),
            2 * stats.t.sf(np.abs(t), df),
            rtol=1e-9,
            atol=1e-300,
        )


def test_card_ttest_matches_scipy_on_probability_samples():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.array([4.0, 3.0, 1.0, 0.5]), size=(30, 64))  # [S, B, K]
    got = US.card_paired_ttest(p)
    rows = np.arange(64)
    ref = stats.ttest_rel(p[:, rows, got["top1"]], p[:, rows, got["top2"]], axis=0)
    np.testing.assert_allclose(got["t"], ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(got["p_value"], ref.pvalue, rtol=1e-8, atol=1e-300)
    np.testing.assert_array_equal(got["uncertain"], ref.pvalue >= 0.05)
    votes = U.vote_histogram(p)
    assert np.all(votes[rows, got["top1"]] >= votes[rows, got["top2"]])
    assert np.all(got["top1"] != got["top2"])


def test_card_ttest_on_class_ids():
    rng = np.random.default_rng(1)
    # Image 0: 12 votes for 3, 8 for 5 -> not significant; image 1: 19 vs 1 -> significant.
    ids = np.stack([rng.permutation([3] * 12 + [5] * 8), rng.permutation([2] * 19 + [7])], axis=1)
    got = US.card_paired_ttest(ids)
    np.testing.assert_array_equal(got["top1"], [3, 2])
    np.testing.assert_array_equal(got["top2"], [5, 7])
    d = (ids == got["top1"]).astype(float) - (ids == got["top2"])  # [S, B]
    ref = stats.ttest_1samp(d, 0.0, axis=0)
    np.testing.assert_allclose(got["t"], ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(got["p_value"], ref.pvalue, rtol=1e-8)
    np.testing.assert_array_equal(got["uncertain"], [True, False])


def test_card_ttest_degenerate_cases():
    # Unanimous: d = 1 for every sample -> t = inf, p = 0 (confident). Even split -> t = 0, p = 1.
    ids = np.array([[4, 1], [4, 2], [4, 1], [4, 2]])
    got = US.card_paired_ttest(ids)
    assert got["t"][0] == np.inf and got["p_value"][0] == 0.0 and not got["uncertain"][0]
    assert got["t"][1] == 0.0 and got["p_value"][1] == 1.0 and got["uncertain"][1]
    assert got["top1"][1] == 1 and got["top2"][1] == 2  # vote tie -> lower class index first
    with pytest.raises(ValueError, match="S = 2"):
        US.card_paired_ttest(np.array([[0, 1]]))


def test_roc_curve_matches_scikit_learn():
    rng = np.random.default_rng(3)
    s_in, s_out = rng.integers(0, 6, 40).astype(float), rng.integers(2, 9, 30).astype(float)
    fpr, tpr = U.roc_curve(s_in, s_out)
    y = np.r_[np.zeros(40), np.ones(30)]
    ref_fpr, ref_tpr, _ = skm.roc_curve(y, np.r_[s_in, s_out], drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(U.auroc(s_in, s_out))
