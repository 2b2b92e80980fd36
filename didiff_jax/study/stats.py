"""The study's statistics: means and spreads over seeds, the headline gains paired by seed, and
Spearman's rank correlation with its permutation p-value.

Seeds are few (3 in the full grid), so the spread is the sample standard deviation of the values
themselves, the gains are paired by seed (both models of a pair share the seed, hence the kept data
subset), and the p-value of the rank correlation is exact where it can be.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from didiff_jax.study.grid import (
    CONDITIONS,
    HEADLINE_SAMPLER,
    Cell,
    Grid,
    condition_records,
    headline_steps,
    pair_objective,
)

METRICS = ("top1", "top5", "nll", "ece")


def _stats(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)  # [n]
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "n": int(len(v)), "values": [float(x) for x in v]}  # fmt: skip


def summarize(grid: Grid, found: dict[Cell, dict]) -> dict:
    """Means and spreads over seeds of every (pair, condition, model, sampler, steps) and the paired
    headline gains; JSON-ready. ``found``: the finished runs (``runner.collect``)."""
    rows = []
    groups: dict[tuple, dict[int, dict]] = {}
    for cell, res in found.items():
        for r in condition_records(res["records"], CONDITIONS[cell.condition]):
            key = (cell.pair, cell.condition, cell.role, r["model"], r["objective"], r["sampler"],
                   r["steps"])  # fmt: skip
            groups.setdefault(key, {})[cell.seed] = r
    for key, by_seed in groups.items():
        pair, condition, role, model, objective, sampler, steps = key
        row = {"pair": pair, "condition": condition, "role": role, "model": model,
               "objective": objective, "sampler": sampler, "steps": steps,
               "seeds": sorted(by_seed)}  # fmt: skip
        for m in METRICS:
            row[m] = _stats([by_seed[s][m] for s in sorted(by_seed)])
        rows.append(row)

    headline = []
    for pair in grid.pairs:
        for condition in grid.conditions:
            picks = {}
            for role in ("diffusion", "baseline"):
                objective = pair_objective(pair, role)
                label, steps = HEADLINE_SAMPLER[objective], headline_steps(objective, grid)
                key = next((k for k in groups if k[0] == pair and k[1] == condition
                            and k[2] == role and k[5] == label and k[6] == steps), None)  # fmt: skip
                picks[role] = (groups[key] if key else {}, label, steps)
            entry = {"pair": pair, "condition": condition}
            for role, (by_seed, label, steps) in picks.items():
                entry[role] = {"sampler": label, "steps": steps, "seeds": sorted(by_seed),
                               **{m: _stats([by_seed[s][m] for s in sorted(by_seed)])
                                  for m in METRICS if by_seed}}  # fmt: skip
            paired = sorted(set(picks["diffusion"][0]) & set(picks["baseline"][0]))
            for m in ("top1", "top5"):
                if paired:
                    entry[f"gain_{m}"] = _stats([picks["diffusion"][0][s][m] - picks["baseline"][0][s][m]
                                                 for s in paired])  # fmt: skip
            if picks["baseline"][0]:
                entry["difficulty"] = 1.0 - entry["baseline"]["top1"]["mean"]
            headline.append(entry)
    return {"grid": dataclasses.asdict(grid), "rows": rows, "headline": headline}


# --------------------------------------------------------------------------- rank correlation


def _ranks(a: Sequence[float]) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(len(a), dtype=np.float64)
    for v in np.unique(a):
        r[a == v] = r[a == v].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_p_greater(x: Sequence[float], y: Sequence[float], *, draws: int = 20_000) -> float:
    """One-sided permutation p-value of Spearman's rho being at least the observed one under
    independence: exact (every permutation of ``y``) up to 8 points, else ``draws`` random ones.
    With 4 conditions the smallest possible value is 1/24: no 4-point ranking is significant."""
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    if len(ry) <= 8:
        perms = np.asarray(list(itertools.permutations(ry)))  # [n!, n]
    else:
        rng = np.random.default_rng(0)
        perms = np.stack([rng.permutation(ry) for _ in range(draws)])
    cx = rx - rx.mean()
    cp = perms - perms.mean(axis=1, keepdims=True)
    rho = cp @ cx / (np.linalg.norm(cp, axis=1) * np.linalg.norm(cx))  # [P]
    observed = spearman(x, y)
    return float(np.mean(rho >= observed - 1e-12))
