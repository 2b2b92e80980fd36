"""PNG plots of evaluation results (matplotlib, non-interactive Agg backend).

Every function builds its own ``matplotlib.figure.Figure`` attached to a ``FigureCanvasAgg`` and
never touches pyplot, so no global figure state leaks between calls or threads and nothing needs a
display. Each writes a PNG to ``path`` (parent folders are created) and returns the path.

Records (for the accuracy plots) are dicts with at least ``model``, ``sampler``, ``steps``,
``condition``, ``severity`` and ``top1``, one per evaluated configuration; repeated records of the
same configuration (e.g. several seeds) are averaged.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

CLEAN = "clean"


# ------------------------------------------------------------------------------------ helpers


def _new_figure(nrows: int = 1, ncols: int = 1, *, panel: tuple[float, float] = (4.5, 3.5), **kw):
    """A pyplot-free Figure with an Agg canvas and an [nrows, ncols] array of axes."""
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)  # [nrows, ncols]
    return fig, axes


def _save(fig: Figure, path: str | os.PathLike) -> str | os.PathLike:
    target = epath.Path(path)  # a gs:// path is written there, not to a local folder "gs:"
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return path


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    ncols = max(1, min(max_cols, n))
    return math.ceil(n / ncols), ncols


def _series_label(model: Any, sampler: Any, steps: Any = "omit") -> str:
    parts = [str(model), str(sampler)]
    if steps != "omit" and steps is not None:
        parts.append(f"{steps} steps")
    return " / ".join(parts)


def _color(i: int) -> str:
    return f"C{i % 10}"


def _mean_by(records: Sequence[Mapping[str, Any]], key_fn) -> dict[Any, float]:
    """Mean ``top1`` per ``key_fn(record)``, keys in first-seen order."""
    acc: dict[Any, list[float]] = defaultdict(list)
    for r in records:
        acc[key_fn(r)].append(float(r["top1"]))
    return {k: float(np.mean(v)) for k, v in acc.items()}


# ------------------------------------------------------------------------------------ accuracy


def plot_accuracy_vs_severity(
    records: Sequence[Mapping[str, Any]], path: str | os.PathLike
) -> str | os.PathLike:
    """Top-1 accuracy against corruption severity: one panel per condition, one line per
    (model, sampler, steps).

    Why: shows how robustness degrades with corruption strength and whether more sampling steps (or a
    different sampler) buy robustness. ``clean`` records, where present, are drawn at severity 0 at
    the start of every panel's matching line, so each line starts from its clean accuracy; if there
    are only clean records, they get a panel of their own.
    """
    if not records:
        raise ValueError("no records to plot")
    conditions = list(dict.fromkeys(str(r["condition"]) for r in records))
    corrupted = [c for c in conditions if c != CLEAN]
    panels = corrupted or [CLEAN]

    def series_key(r):
        return (r["model"], r["sampler"], r["steps"])

    series = list(dict.fromkeys(series_key(r) for r in records))
    # Colour by (model, sampler), line style by step count: the lines of one sampler stay together.
    pairs = list(dict.fromkeys(s[:2] for s in series))
    step_values = list(dict.fromkeys(s[2] for s in series))
    linestyles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D", "v", "P")
    style = {
        s: dict(
            color=_color(pairs.index(s[:2])),
            linestyle=linestyles[step_values.index(s[2]) % len(linestyles)],
            marker=markers[step_values.index(s[2]) % len(markers)],
        )
        for s in series
    }
    means = _mean_by(
        records, lambda r: (series_key(r), str(r["condition"]), int(r.get("severity") or 0))
    )

    nrows, ncols = _grid(len(panels), 3)
    fig, axes = _new_figure(nrows, ncols, sharey=True)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, cond in zip(axes.flat, panels, strict=False):
        for s in series:
            pts = {sev: v for (k, c, sev), v in means.items() if k == s and c == cond}
            if cond != CLEAN:
                clean = [v for (k, c, _), v in means.items() if k == s and c == CLEAN]
                if clean and 0 not in pts:
                    pts[0] = float(np.mean(clean))
            if not pts:
                continue
            sev = sorted(pts)
            ax.plot(sev, [pts[x] for x in sev], label=_series_label(*s), **style[s])
        ax.set_title(cond)
        ax.set_xlabel("severity")
        ax.grid(True, alpha=0.3)
        sevs = sorted(
            {sev for (_, c, sev) in means if c == cond} | ({0} if cond != CLEAN else set())
        )
        ax.set_xticks(sevs)
    for ax in axes[:, 0]:
        ax.set_ylabel("top-1 accuracy")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for ax in axes.flat[1 : len(panels)]:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab, strict=True):
            seen.setdefault(ll, hh)
    fig.legend(
        list(seen.values()),
        list(seen.keys()),
        loc="outside lower center",
        ncols=min(3, len(seen)),
        fontsize="small",
    )
    return _save(fig, path)


def plot_accuracy_vs_steps(
    records: Sequence[Mapping[str, Any]], path: str | os.PathLike
) -> str | os.PathLike:
    """Clean top-1 accuracy against the number of sampling steps (log2 x-axis), one line per
    (model, sampler).

    Why: the compute/accuracy trade-off of the reverse chain. Only ``condition == "clean"`` records
    are used. Records with ``steps`` None (a one-shot model, e.g. a plain classifier baseline) are
    drawn as dashed horizontal reference lines.
    """
    clean = [r for r in records if str(r["condition"]) == CLEAN]
    if not clean:
        raise ValueError("no records with condition == 'clean' to plot")
    means = _mean_by(clean, lambda r: ((r["model"], r["sampler"]), r["steps"]))
    series = list(dict.fromkeys(k for k, _ in means))

    fig, axes = _new_figure(1, 1, panel=(6.0, 4.0))
    ax = axes[0, 0]
    all_steps: set[int] = set()
    for i, s in enumerate(series):
        pts = {st: v for (k, st), v in means.items() if k == s and st is not None}
        baseline = [v for (k, st), v in means.items() if k == s and st is None]
        if pts:
            steps = sorted(pts, key=int)
            all_steps.update(int(st) for st in steps)
            ax.plot(
                steps,
                [pts[st] for st in steps],
                marker="o",
                color=_color(i),
                label=_series_label(*s),
            )
        for v in baseline:
            ax.axhline(v, linestyle="--", color=_color(i), label=_series_label(*s) + " (one-shot)")
    if all_steps:
        ax.set_xscale("log", base=2)
        ticks = sorted(all_steps)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        if len(ticks) == 1:  # a single step count: give the log axis some width around it
            ax.set_xlim(ticks[0] / 2, ticks[0] * 2)
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("top-1 accuracy (clean)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


# ------------------------------------------------------------------------------------ trajectory


def plot_trajectory(
    traj: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    true_label: int | Sequence[int] | None = None,
    top: int = 5,
) -> str | os.PathLike:
    """Class-probability trajectory of images through the reverse chain (as in the DiDiCM paper).

    Args:
      traj: [S, K] (one image) or [S, B, K] class probabilities at each of S reverse steps.
      class_names: K names, for the legend.
      path: output PNG.
      true_label: the true class of the image (int) or of each image (B ints); drawn thick and black
        and marked "(true)", and added to the plotted classes even when not among the top.
      top: number of classes plotted per image, those with the highest FINAL probability.

    Why: shows how the chain's belief moves from the prior to its prediction, one panel per image.
    """
    traj = np.asarray(traj, dtype=np.float64)
    if traj.ndim == 2:
        traj = traj[:, None, :]  # [S, 1, K]
    if traj.ndim != 3:
        raise ValueError(f"traj must be [S, K] or [S, B, K], got shape {traj.shape}")
    num_steps, batch, num_classes = traj.shape
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    if true_label is None:
        labels: list[int | None] = [None] * batch
    else:
        labels = [int(x) for x in np.atleast_1d(np.asarray(true_label))]
        if len(labels) != batch:
            raise ValueError(f"{len(labels)} true labels for {batch} images")
    top = max(1, min(int(top), num_classes))
    steps = np.arange(num_steps)  # [S]

    nrows, ncols = _grid(batch, 4)
    fig, axes = _new_figure(nrows, ncols, panel=(4.5, 3.2))
    for ax in axes.flat[batch:]:
        ax.set_visible(False)
    for b, ax in zip(range(batch), axes.flat, strict=False):
        final = traj[-1, b]  # [K]
        order = list(np.argsort(-final, kind="stable")[:top])  # top classes, ties to lower index
        label = labels[b]
        if label is not None and label not in order:
            order.append(label)
        for j, k in enumerate(order):
            is_true = label is not None and k == label
            ax.plot(
                steps,
                traj[:, b, k],
                color="black" if is_true else _color(j),
                linewidth=2.5 if is_true else 1.5,
                marker="o" if num_steps == 1 else None,
                label=f"{class_names[k]} (true)" if is_true else str(class_names[k]),
            )
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("reverse step")
        ax.set_ylabel("probability")
        pred = int(np.argmax(final))
        ax.set_title(f"image {b}: pred {class_names[pred]}", fontsize="medium")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small", loc="best")
    return _save(fig, path)


# ------------------------------------------------------------------------------------ calibration


def plot_reliability(
    reliability: Mapping[str, Any], path: str | os.PathLike, title: str = ""
) -> str | os.PathLike:
    """Reliability diagram: per-bin accuracy against confidence, the calibration gap, ECE in the title.

    Args:
      reliability: ``metrics.finalize(...)["reliability"]`` (per-bin ``confidence``, ``accuracy``,
        ``count``; optional ``bin_edges``), or the whole ``finalize`` output.
      path: output PNG.
      title: prefix of the title; the ECE (computed from the bins) is appended.

    Why: the ECE is one number; the diagram shows where (which confidences) a model is over- or
    under-confident. Bars are the accuracy per bin, the hatched red part the gap to the bin's mean
    confidence, the dashed diagonal perfect calibration; a lower panel shows how many examples fall
    into each bin. Empty bins are skipped.
    """
    if "reliability" in reliability and isinstance(reliability["reliability"], Mapping):
        reliability = reliability["reliability"]
    counts = np.asarray(reliability["count"], dtype=np.float64)  # [M]
    num_bins = counts.shape[0]
    conf = np.array([np.nan if c is None else c for c in reliability["confidence"]], np.float64)
    acc = np.array([np.nan if a is None else a for a in reliability["accuracy"]], np.float64)
    edges = np.asarray(
        reliability.get("bin_edges", np.linspace(0.0, 1.0, num_bins + 1)), np.float64
    )
    centers = 0.5 * (edges[:-1] + edges[1:])  # [M]
    widths = np.diff(edges)  # [M]
    nonempty = counts > 0
    total = counts.sum()
    ece = (
        float(np.sum(np.abs(acc - conf)[nonempty] * counts[nonempty]) / total) if total > 0 else 0.0
    )

    fig, axes = _new_figure(
        2, 1, panel=(5.0, 2.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax, ax_n = axes[0, 0], axes[1, 0]
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ne = nonempty
    ax.bar(centers[ne], acc[ne], width=widths[ne], edgecolor="black", color="C0", label="accuracy")
    ax.bar(
        centers[ne],
        (conf - acc)[ne],
        bottom=acc[ne],
        width=widths[ne],
        color="red",
        alpha=0.3,
        edgecolor="red",
        hatch="//",
        label="gap",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"{title}  ECE = {ece:.4f}".strip() if title else f"ECE = {ece:.4f}")
    ax_n.bar(centers, counts, width=widths, color="gray", edgecolor="black")
    ax_n.set_xlabel("confidence")
    ax_n.set_ylabel("count")
    return _save(fig, path)


# ------------------------------------------------------------------------------------ robustness


def plot_gain_vs_difficulty(
    points: Sequence[Mapping[str, Any]], path: str | os.PathLike
) -> str | os.PathLike:
    """Top-1 gain of a diffusion model over its baseline against the difficulty of the condition.

    Args:
      points: dicts with ``series`` (e.g. the model pair), ``label`` (the condition, written next to
        its point), ``difficulty`` (the baseline's top-1 error under that condition, in [0, 1]),
        ``gain`` (diffusion top-1 minus baseline top-1, in [-1, 1]) and optionally ``gain_std``
        (its spread over seeds; drawn as an error bar).
      path: output PNG.

    Why: the papers claim the gain grows as the task gets harder; a rising cloud above the dashed
    zero line supports it, points below the line are conditions where the baseline wins. Both axes
    are in percentage points.
    """
    if not points:
        raise ValueError("no points to plot")
    series = list(dict.fromkeys(str(p["series"]) for p in points))
    fig, axes = _new_figure(1, 1, panel=(6.0, 4.0))
    ax = axes[0, 0]
    ax.axhline(0.0, linestyle="--", color="gray", linewidth=1)
    labelled = []  # (color, [(x, y, yerr, text), ...]) per series, for _place_labels
    for i, s in enumerate(series):
        pts = sorted((p for p in points if str(p["series"]) == s), key=lambda p: p["difficulty"])
        x = np.array([100 * float(p["difficulty"]) for p in pts])  # [N]
        y = np.array([100 * float(p["gain"]) for p in pts])  # [N]
        err = np.array([100 * float(p.get("gain_std") or 0.0) for p in pts])  # [N]
        ax.errorbar(x, y, yerr=err, marker="o", linestyle="-", color=_color(i), capsize=3, label=s)
        texts = [str(p["label"]) for p in pts]
        labelled.append((_color(i), list(zip(x, y, err, texts, strict=True))))
    ax.set_xlabel("difficulty: baseline top-1 error (%)")
    ax.set_ylabel("top-1 gain of diffusion over baseline (points)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    _place_labels(fig, ax, labelled)
    return _save(fig, path)


# Where a point's label may go, in points from the point: (dx, dy, horizontal alignment), tried in
# order. Right of the point first (the usual place), then left, above, below, and further out.
_LABEL_OFFSETS = (
    (5, 3, "left"), (5, -10, "left"), (-5, 3, "right"), (-5, -10, "right"),
    (0, 7, "center"), (0, -15, "center"), (5, 12, "left"), (5, -19, "left"),
    (-5, 12, "right"), (-5, -19, "right"), (0, 16, "center"), (0, -24, "center"),
)  # fmt: skip


def _place_labels(
    fig: Figure, ax, labelled: Sequence[tuple[str, Sequence[tuple[float, float, float, str]]]]
) -> None:
    """Writes each series' (x, y, yerr, text) labels, in the series' color, next to their points
    where they cover the least: labels already written and the legend, then points with their
    error bars, then the line through the series' points (in the given order); all inside the axes.

    Greedy over ``_LABEL_OFFSETS`` in display space: points that sit close together (conditions of
    about the same difficulty and gain) otherwise get labels written over each other and over the
    error bars.
    """
    fig.canvas.draw()  # settle the constrained layout so display coordinates are final
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    to_px = ax.transData.transform
    obstacles = []  # (bbox, weight)
    legend = ax.get_legend()
    if legend is not None:
        obstacles.append((legend.get_window_extent(renderer), 20))
    for _, items in labelled:
        for x, y, yerr, _ in items:  # each marker (about 8 px across) with its error bar
            (px, lo), (_, hi) = to_px([(x, y - yerr), (x, y + yerr)])
            obstacles.append((Bbox.from_extents(px - 4, lo - 4, px + 4, hi + 4), 5))
        seg = to_px([(x, y) for x, y, _, _ in items])  # [N, 2] the series' line, in pixels
        for a, b in zip(seg[:-1], seg[1:], strict=True):  # sampled every 4 px
            for q in np.linspace(a, b, max(2, int(np.hypot(*(b - a)) // 4))):
                obstacles.append((Bbox.from_extents(*(q - 1), *(q + 1)), 1))
    for color, items in labelled:
        for x, y, _, text in items:
            tried = []  # (cost, annotation, bbox)
            for dx, dy, ha in _LABEL_OFFSETS:
                ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy),
                                  ha=ha, fontsize="x-small", color=color)  # fmt: skip
                bbox = ann.get_window_extent(renderer)
                inside = np.all(bbox.min >= frame.min) and np.all(bbox.max <= frame.max)
                tried.append((sum(w for o, w in obstacles if bbox.overlaps(o)) + 100 * (not inside),
                              ann, bbox))  # fmt: skip
                if tried[-1][0] == 0:
                    break
            best = min(tried, key=lambda c: c[0])  # the first of the cheapest
            for _, ann, _ in tried:
                if ann is not best[1]:
                    ann.remove()
            obstacles.append((best[2], 20))


# ------------------------------------------------------------------------------- uncertainty


def plot_risk_coverage(curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                       path: str | os.PathLike) -> str | os.PathLike:  # fmt: skip
    """Selective risk against coverage, one line per run (``{name: (coverage [N], risk [N])}``),
    AURC in the legend: lower and flatter is better uncertainty ranking."""
    fig, axes = _new_figure(panel=(5.5, 4.0))
    ax = axes[0, 0]
    for i, (name, (coverage, risk)) in enumerate(curves.items()):
        ax.plot(coverage, 100 * np.asarray(risk), color=_color(i),
                label=f"{name}: AURC {100 * float(np.mean(risk)):.2f}%")  # fmt: skip
    ax.set(xlabel="coverage", ylabel="selective risk (%)", xlim=(0, 1), ylim=(0, None),
           title="Risk-coverage")  # fmt: skip
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_corruption_bars(top1: Mapping[str, Mapping[str, Sequence[float]]],
                         path: str | os.PathLike) -> str | os.PathLike:  # fmt: skip
    """Top-1 per corruption (mean over severities), grouped bars, one colour per run
    (``{name: {corruption: [top-1 per severity]}}``)."""
    runs = list(top1)
    names = list(next(iter(top1.values())))
    fig, axes = _new_figure(panel=(max(6.0, 0.6 * len(names)), 3.8))
    ax = axes[0, 0]
    width = 0.8 / len(runs)
    x = np.arange(len(names))
    for i, run in enumerate(runs):
        means = [100 * float(np.mean(top1[run][n])) for n in names]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, means, width, color=_color(i), label=run)
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="top-1 (%), mean over severities", ylim=(0, 100), title="Corruptions")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
             title: str = "") -> str | os.PathLike:  # fmt: skip
    """ROC curves of OOD detection, one per run (``{name: (fpr, tpr)}``), AUROC in the legend."""
    fig, axes = _new_figure(panel=(4.5, 4.0))
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    for i, (name, (fpr, tpr)) in enumerate(curves.items()):
        ax.plot(fpr, tpr, color=_color(i),
                label=f"{name}: AUROC {float(np.trapezoid(tpr, fpr)):.3f}")  # fmt: skip
    ax.set(xlabel="false-positive rate (in-distribution flagged)",
           ylabel="true-positive rate (OOD flagged)", xlim=(0, 1), ylim=(0, 1), title=title)  # fmt: skip
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
