"""The study's report: the plots and the generated markdown block of ``docs/results.md``.

The block holds the grid and its budget, the command that rebuilds (and resumes) it, the generated
statements of where the claim holds (``verdict``), the headline table of each pair, every sampler's
row, and the plots; a cell that has not run reads "not run", so a partly run study already reports
what it has. Only this block of the results file is rewritten.
"""

from __future__ import annotations

import collections
import os
import pathlib

import numpy as np

from didiff_jax import plots
from didiff_jax.study.grid import (
    CONDITIONS,
    HEADLINE_SAMPLER,
    PAIRS,
    Cell,
    Grid,
    build_config,
    cells,
    condition_records,
    headline_steps,
    pair_objective,
)
from didiff_jax.study.io import write_block, write_json
from didiff_jax.study.runner import collect
from didiff_jax.study.stats import summarize
from didiff_jax.study.verdict import verdict


def hours(seconds: float) -> str:
    """A duration for people: minutes below an hour, else hours."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _fmt(stats: dict | None, *, percent: bool, digits: int) -> str:
    """``mean ± std`` of a metric over seeds (``stats._stats``), or "not run"."""
    if not stats:
        return "not run"
    scale = 100.0 if percent else 1.0
    text = f"{scale * stats['mean']:.{digits}f}"
    if stats["std"] is not None:
        text += f" ± {scale * stats['std']:.{digits}f}"
    return text


# ------------------------------------------------------------------------------------- plots


def _relabel(record: dict, condition: str) -> dict:
    """A record with ``condition`` / ``severity`` as the severity plot wants them: the clean run at
    severity 0 of every panel, corrupted runs under their corruption kind."""
    cond = CONDITIONS[condition]
    return {**record, "condition": cond.kind, "severity": cond.severity}


def pooled_reliability(reliabilities: list[dict]) -> dict:
    """Per-bin reliability pooled over seeds: counts add, confidences and accuracies are
    count-weighted means."""
    counts = np.sum([r["count"] for r in reliabilities], axis=0).astype(np.float64)  # [M]
    conf = np.zeros_like(counts)
    acc = np.zeros_like(counts)
    for r in reliabilities:
        n = np.asarray(r["count"], dtype=np.float64)
        conf += np.nan_to_num(np.array(r["confidence"], dtype=np.float64)) * n
        acc += np.nan_to_num(np.array(r["accuracy"], dtype=np.float64)) * n
    nonempty = counts > 0
    safe = np.where(nonempty, counts, 1.0)
    return {
        "count": [int(c) for c in counts],
        "confidence": [float(c) if e else None for c, e in zip(conf / safe, nonempty, strict=True)],
        "accuracy": [float(a) if e else None for a, e in zip(acc / safe, nonempty, strict=True)],
        "bin_edges": reliabilities[0].get("bin_edges"),
    }


def make_plots(grid: Grid, found: dict[Cell, dict], summary: dict, fig_dir: pathlib.Path
               ) -> dict[str, pathlib.Path]:  # fmt: skip
    """The study's plots in ``fig_dir``: gain against difficulty, clean accuracy against steps,
    accuracy against severity (noise, low resolution) and the reliability diagram of each model's
    headline sampler on the clean test set (pooled over seeds)."""
    made = {}
    points = [{"series": PAIRS[e["pair"]].title, "label": CONDITIONS[e["condition"]].label,
               "difficulty": e["difficulty"], "gain": e["gain_top1"]["mean"],
               "gain_std": e["gain_top1"]["std"]}
              for e in summary["headline"] if "gain_top1" in e and "difficulty" in e]  # fmt: skip
    if points:
        made["gain"] = plots.plot_gain_vs_difficulty(points, fig_dir / "gain_vs_difficulty.png")
    clean = [r for cell, res in found.items() if cell.condition == "clean"
             for r in res["records"]]  # fmt: skip
    if clean:
        made["steps"] = plots.plot_accuracy_vs_steps(clean, fig_dir / "accuracy_vs_steps.png")
    headline_labels = {HEADLINE_SAMPLER[o] for o in HEADLINE_SAMPLER}
    severity = []
    for cell, res in found.items():
        if CONDITIONS[cell.condition].variant.startswith("ratio"):
            continue
        for r in condition_records(res["records"], CONDITIONS[cell.condition]):
            steps = (
                headline_steps(r["objective"], grid) if r["objective"] in HEADLINE_SAMPLER else None
            )
            if r["sampler"] in headline_labels and r["steps"] == steps:
                severity.append(_relabel(r, cell.condition))
    if len({(r["condition"], r["severity"]) for r in severity}) > 1:
        made["severity"] = plots.plot_accuracy_vs_severity(
            severity, fig_dir / "accuracy_vs_severity.png"
        )
    for pair in grid.pairs:
        for role in ("diffusion", "baseline"):
            objective = pair_objective(pair, role)
            label, steps = HEADLINE_SAMPLER[objective], headline_steps(objective, grid)
            rel = [r["reliability"] for cell, res in found.items()
                   if cell.pair == pair and cell.role == role and cell.condition == "clean"
                   for r in res["records"] if r["sampler"] == label and r["steps"] == steps]  # fmt: skip
            if rel:
                name = getattr(PAIRS[pair], role).removeprefix("fashion_mnist_")
                title = f"{name}, {label}" + (f", {steps} steps" if steps else "")
                made[f"reliability_{name}"] = plots.plot_reliability(
                    pooled_reliability(rel), fig_dir / f"reliability_{name}.png", title=title
                )
    return {k: pathlib.Path(v) for k, v in made.items()}


# ------------------------------------------------------------------------------------ markdown


def report_markdown(grid: Grid, found: dict[Cell, dict], summary: dict,
                    figures: dict[str, pathlib.Path], results_dir: pathlib.Path,
                    command: str) -> str:  # fmt: skip
    """The generated block of the "Robustness study" section for ``grid``."""
    expected = cells(grid)
    lines = [f"### The {grid.tag} grid", ""]
    budgets = {p: build_config(Cell(p, "diffusion", "clean", 0), grid) for p in grid.pairs}
    lines.append(
        f"Pairs {', '.join(grid.pairs)}; conditions {', '.join(grid.conditions)}; seeds "
        f"{', '.join(map(str, grid.seeds))}; budget "
        + ", ".join(f"{p}: {c.num_steps} steps of {c.batch_size}" for p, c in budgets.items())
        + f"; test images: {grid.eval_examples or 'all 10,000'}. "
        f"{len(found)} of {len(expected)} runs done."
    )
    lines += ["", "Made (and resumable) with:", "", f"    {command}", ""]
    train_s = sum(r["meta"].get("train_s", 0.0) for r in found.values())
    eval_s = sum(r["meta"].get("eval_s", 0.0) for r in found.values())
    machines = collections.Counter(r["meta"].get("machine", "unknown") for r in found.values())
    if found:
        where = "; ".join(f"{n} run{'s' * (n > 1)} on {m.replace(';', ',')}"
                          for m, n in sorted(machines.items()))  # fmt: skip
        lines.append(f"Wall-clock of the runs: {hours(train_s)} training, {hours(eval_s)} "
                     f"evaluation (sum over runs; a resumed run counts the time after its last resume); "
                     f"{where}.")  # fmt: skip
        lines.append("")

    lines += ["**Where the claim holds (generated from the table below):**", ""]
    lines += [f"* {s}" for s in verdict(grid, summary)] + [""]

    for pair in grid.pairs:
        entries = [e for e in summary["headline"] if e["pair"] == pair]
        d0 = entries[0]["diffusion"]
        d_name = f"{d0['sampler']} {d0['steps']} steps"
        lines += [f"**{PAIRS[pair].title}**: headline samplers, mean ± std over seeds "
                  "(gain: paired by seed, in points)", "",
                  f"| condition | baseline top-1 | diffusion top-1 ({d_name}) | top-1 gain | "
                  "baseline top-5 | diffusion top-5 | top-5 gain | NLL baseline / diffusion | "
                  "ECE baseline / diffusion |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for e in entries:
            b, d = e["baseline"], e["diffusion"]
            lines.append(
                f"| {CONDITIONS[e['condition']].label} | "
                f"{_fmt(b.get('top1'), percent=True, digits=2)} | "
                f"{_fmt(d.get('top1'), percent=True, digits=2)} | "
                f"{_fmt(e.get('gain_top1'), percent=True, digits=2)} | "
                f"{_fmt(b.get('top5'), percent=True, digits=2)} | "
                f"{_fmt(d.get('top5'), percent=True, digits=2)} | "
                f"{_fmt(e.get('gain_top5'), percent=True, digits=2)} | "
                f"{_fmt(b.get('nll'), percent=False, digits=3)} / "
                f"{_fmt(d.get('nll'), percent=False, digits=3)} | "
                f"{_fmt(b.get('ece'), percent=False, digits=3)} / "
                f"{_fmt(d.get('ece'), percent=False, digits=3)} |"
            )
        lines.append("")

    lines += ["<details><summary>Every sampler, every condition (mean ± std over seeds; n = seeds "
              "run)</summary>", "",
              "| pair | condition | model | sampler | steps | n | top-1 % | top-5 % | NLL | ECE |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    by_key = {(r["pair"], r["condition"], r["role"]): [] for r in summary["rows"]}
    for r in summary["rows"]:
        by_key[(r["pair"], r["condition"], r["role"])].append(r)
    for pair in grid.pairs:
        for condition in grid.conditions:
            for role in ("diffusion", "baseline"):
                rows = by_key.get((pair, condition, role))
                if not rows:
                    lines.append(f"| {pair} | {condition} | {getattr(PAIRS[pair], role)} | - | - "
                                 "| 0 | not run | not run | not run | not run |")  # fmt: skip
                    continue
                for r in sorted(rows, key=lambda r: (r["sampler"], r["steps"] or 0)):
                    lines.append(
                        f"| {pair} | {condition} | {r['model']} | {r['sampler']} | "
                        f"{r['steps'] or '-'} | {r['top1']['n']} | "
                        f"{_fmt(r['top1'], percent=True, digits=2)} | "
                        f"{_fmt(r['top5'], percent=True, digits=2)} | "
                        f"{_fmt(r['nll'], percent=False, digits=3)} | "
                        f"{_fmt(r['ece'], percent=False, digits=3)} |"
                    )
    lines += ["", "</details>", ""]

    captions = {
        "gain": "Top-1 gain of the diffusion model over its baseline against the baseline's error",
        "steps": "Clean top-1 against sampling steps (dashed: the one-shot baselines)",
        "severity": "Top-1 against severity (noise, low resolution; severity 0 = the clean run)",
    }
    for key, path in figures.items():
        caption = captions.get(key, f"Reliability diagram, {key.removeprefix('reliability_')} "
                                    "(headline sampler, clean, pooled over seeds)")  # fmt: skip
        rel = os.path.relpath(path, results_dir)
        lines += [f"![{caption}]({rel})", ""]
    return "\n".join(lines)


def write_report(grid: Grid, out: pathlib.Path, results: pathlib.Path, command: str,
                 archive: pathlib.Path | None = None) -> dict:  # fmt: skip
    """Collect the finished runs (from ``out``, else ``archive``), write ``out/summary.json``, the
    plots and the grid's block of ``results``; return the summary."""
    found = collect(grid, out, archive)
    summary = summarize(grid, found)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    fig_dir = results.parent / "figures" / f"robustness_{grid.tag}"
    figures = make_plots(grid, found, summary, fig_dir) if found else {}
    body = report_markdown(grid, found, summary, figures, results.parent, command)
    intro = ("Does label-space diffusion beat the standard classifier with the same body? Generated "
             "by `benchmarks/robustness.py` (see its docstring for the design); each block below is "
             "rewritten by the driver from the runs that exist, whose records are committed under "
             "`benchmarks/results/robustness_<grid>/`.")  # fmt: skip
    write_block(results, "robustness-study", grid.tag, body, intro=intro)
    return summary
