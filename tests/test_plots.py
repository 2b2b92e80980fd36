"""Tests for didiff_jax.plots: each plot writes a valid, non-empty PNG from small synthetic inputs."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from didiff_jax import metrics, plots  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, returned):
    assert str(returned) == str(path)
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"


def _records(severities=(1, 3, 5), steps=(1, 4, 16), conditions=("gaussian_noise", "blur")):
    recs = []
    for model in ("resnet", "vit"):
        for sampler in ("cp", "cl"):
            for st in steps:
                base = 0.9 - 0.1 / st - (0.05 if model == "vit" else 0.0)
                recs.append(
                    dict(
                        model=model,
                        sampler=sampler,
                        steps=st,
                        condition="clean",
                        severity=0,
                        top1=base,
                    )
                )
                for cond in conditions:
                    for sev in severities:
                        recs.append(
                            dict(
                                model=model,
                                sampler=sampler,
                                steps=st,
                                condition=cond,
                                severity=sev,
                                top1=base - 0.1 * sev,
                            )
                        )
    return recs


def test_accuracy_vs_severity(tmp_path):
    path = tmp_path / "sev.png"
    _assert_png(path, plots.plot_accuracy_vs_severity(_records(), path))


def test_accuracy_vs_severity_single_point(tmp_path):
    recs = _records(severities=(3,), steps=(8,), conditions=("fog",))
    recs = [r for r in recs if r["condition"] != "clean"][:1]
    path = tmp_path / "sev1.png"
    _assert_png(path, plots.plot_accuracy_vs_severity(recs, path))


def test_accuracy_vs_severity_clean_only_and_nested_dir(tmp_path):
    recs = [r for r in _records() if r["condition"] == "clean"]
    path = tmp_path / "sub" / "dir" / "clean.png"
    _assert_png(path, plots.plot_accuracy_vs_severity(recs, path))


def test_accuracy_vs_steps(tmp_path):
    recs = _records(steps=(1, 2, 4, 8, 32))
    recs.append(
        dict(
            model="classifier", sampler="none", steps=None, condition="clean", severity=0, top1=0.88
        )
    )
    path = tmp_path / "steps.png"
    _assert_png(path, plots.plot_accuracy_vs_steps(recs, path))


def test_accuracy_vs_steps_single_point(tmp_path):
    recs = [dict(model="m", sampler="cp", steps=4, condition="clean", severity=0, top1=0.7)]
    path = tmp_path / "steps1.png"
    _assert_png(path, plots.plot_accuracy_vs_steps(recs, path))


def test_accuracy_vs_steps_needs_clean(tmp_path):
    recs = [dict(model="m", sampler="cp", steps=4, condition="fog", severity=1, top1=0.7)]
    with pytest.raises(ValueError, match="clean"):
        plots.plot_accuracy_vs_steps(recs, tmp_path / "x.png")


def _trajectory(num_steps, batch, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    logits = np.cumsum(rng.normal(size=(num_steps, batch, num_classes)), axis=0)  # [S, B, K]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_trajectory_single_image(tmp_path):
    traj = _trajectory(12, 1, 10)[:, 0]  # [S, K]
    names = [f"class_{k}" for k in range(10)]
    path = tmp_path / "traj1.png"
    _assert_png(path, plots.plot_trajectory(traj, names, path, true_label=3))


def test_trajectory_batch(tmp_path):
    traj = _trajectory(8, 5, 10)  # [S, B, K]
    names = [f"c{k}" for k in range(10)]
    path = tmp_path / "trajb.png"
    out = plots.plot_trajectory(traj, names, path, true_label=[0, 1, 2, 3, 9], top=3)
    _assert_png(path, out)


def test_trajectory_edge_cases(tmp_path):
    # One step, fewer classes than `top`, no true label.
    traj = _trajectory(1, 2, 3)
    path = tmp_path / "traj_edge.png"
    _assert_png(path, plots.plot_trajectory(traj, ["a", "b", "c"], path))
    with pytest.raises(ValueError, match="class names"):
        plots.plot_trajectory(traj, ["a", "b"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="true labels"):
        plots.plot_trajectory(traj, ["a", "b", "c"], tmp_path / "bad.png", true_label=[0])


def test_reliability_from_finalize(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 10, size=200)
    results = metrics.finalize(metrics.batch_stats(probs.astype(np.float32), labels, num_bins=10))
    path = tmp_path / "rel.png"
    _assert_png(path, plots.plot_reliability(results["reliability"], path, title="resnet / cp"))
    path2 = tmp_path / "rel_full.png"
    _assert_png(path2, plots.plot_reliability(results, path2))


def test_reliability_single_bin(tmp_path):
    rel = {"confidence": [None, 0.8, None], "accuracy": [None, 0.5, None], "count": [0, 4, 0]}
    path = tmp_path / "rel1.png"
    _assert_png(path, plots.plot_reliability(rel, path))


def test_no_pyplot_state_leak(tmp_path):
    import matplotlib

    plots.plot_accuracy_vs_steps(_records(), tmp_path / "a.png")
    import sys

    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []
    assert matplotlib.get_backend() is not None


def _label_boxes(fig, ax):
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in ax.texts]


def test_place_labels_clustered_points_do_not_collide():
    # Four conditions of nearly equal difficulty and gain, as in the study's DiDiRN cluster: the
    # same offset for every label writes them over each other; the placer must not.
    x = np.array([10.0, 10.3, 10.6, 10.9])  # [N]
    y = np.array([-3.0, -3.1, -2.9, -3.05])  # [N]
    items = [(xi, yi, 0.2, f"condition {i}") for i, (xi, yi) in enumerate(zip(x, y, strict=True))]

    fig, axes = plots._new_figure(1, 1, panel=(6.0, 4.0))
    ax = axes[0, 0]
    ax.errorbar(x, y, yerr=0.2, marker="o")
    ax.set_xlim(0, 40)
    ax.set_ylim(-12, 2)
    for xi, yi, _, text in items:  # the naive placement, for contrast
        ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(5, 3), fontsize="x-small")
    fig.canvas.draw()
    naive = _label_boxes(fig, ax)
    assert any(a.overlaps(b) for i, a in enumerate(naive) for b in naive[i + 1 :])

    for t in list(ax.texts):
        t.remove()
    plots._place_labels(fig, ax, [("C0", items)])
    fig.canvas.draw()
    boxes = _label_boxes(fig, ax)
    assert [t.get_text() for t in ax.texts] == [it[3] for it in items]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    frame = ax.get_window_extent(fig.canvas.get_renderer())
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 for b in boxes)


def test_gain_vs_difficulty(tmp_path):
    points = [
        dict(series="a vs b", label=name, difficulty=d, gain=g, gain_std=0.004)
        for name, d, g in [("clean", 0.09, -0.03), ("noise", 0.10, -0.031), ("1%", 0.2, 0.01)]
    ]
    path = tmp_path / "gain.png"
    _assert_png(path, plots.plot_gain_vs_difficulty(points, path))
    with pytest.raises(ValueError, match="no points"):
        plots.plot_gain_vs_difficulty([], path)
