"""The generated statements of where the study's claim holds: for each pair, in how many conditions
the diffusion model is ahead (every seed's paired gain positive), whether its gain grows with the
difficulty of the condition, and what more sampling steps buy.

They are generated from the summary (``stats.summarize``), so the report says what the runs say,
losses included; the claim "better in every setting" holds only where every condition run is ahead.
"""

from __future__ import annotations

import numpy as np

from didiff_jax.study.grid import PAIRS, Grid
from didiff_jax.study.stats import spearman, spearman_p_greater


def _outcome(gain: dict) -> str:
    """'ahead' / 'behind' when every seed's paired difference has that sign, else 'mixed'."""
    v = np.asarray(gain["values"])
    if np.all(v > 0):
        return "ahead"
    if np.all(v < 0):
        return "behind"
    return "mixed" if len(v) > 1 else "tie"


def verdict(grid: Grid, summary: dict) -> list[str]:
    """Plain statements of where the claim holds in ``summary`` (one list item each)."""
    lines = []
    for pair in grid.pairs:
        entries = [e for e in summary["headline"] if e["pair"] == pair and "gain_top1" in e]
        title = PAIRS[pair].title
        if not entries:
            lines.append(f"{title}: no condition has both models run yet.")
            continue
        d, b = entries[0]["diffusion"], entries[0]["baseline"]
        who = f"{d['sampler']} at {d['steps']} steps against the {b['sampler']}"
        counts = sorted({e["gain_top1"]["n"] for e in entries})  # seeds per condition
        if len(counts) == 1:
            seeds = f"{counts[0]} seed{'s' * (counts[0] > 1)}"
        else:
            seeds = f"{counts[0]}-{counts[-1]} seeds per condition"
        spread = "paired by seed" if counts[-1] > 1 else "no spread"
        for m, name in (("top1", "top-1"), ("top5", "top-5")):
            outcomes = {e["condition"]: _outcome(e[f"gain_{m}"]) for e in entries}
            ahead = [c for c, o in outcomes.items() if o == "ahead"]
            behind = [c for c, o in outcomes.items() if o == "behind"]
            mixed = [c for c, o in outcomes.items() if o == "mixed"]
            level = [c for c, o in outcomes.items() if o == "tie"]
            holds = not behind and not mixed and not level
            text = (f"{title}, {name} ({who}; {seeds}, {spread}): ahead in {len(ahead)} of "
                    f"{len(entries)} conditions run")  # fmt: skip
            if ahead and behind + mixed + level:  # name them where it is not all of them
                text += f" ({', '.join(ahead)})"
            if behind:
                text += f", behind in {', '.join(behind)}"
            if mixed:
                text += f", mixed across seeds in {', '.join(mixed)}"
            if level:
                text += f", level in {', '.join(level)}"
            text += (". The claim (better in every setting) " +
                     ("holds here." if holds else "does not hold here."))  # fmt: skip
            lines.append(text)
        usable = [e for e in entries if "difficulty" in e]
        if len(usable) >= 3:
            difficulty = [e["difficulty"] for e in usable]
            gains = [e["gain_top1"]["mean"] for e in usable]
            rho, p = spearman(difficulty, gains), spearman_p_greater(difficulty, gains)
            if rho > 0 and p < 0.05:
                grows = "grows"
            elif rho > 0:
                grows = "shows no significant growth"
            else:
                grows = "does not grow"
            lo, hi = int(np.argmin(gains)), int(np.argmax(gains))
            lines.append(f"{title}: the top-1 gain {grows} with difficulty (Spearman rank "
                         f"correlation of gain with the baseline's error over {len(usable)} "
                         f"conditions: {rho:+.2f}, one-sided permutation p = {p:.2f}; gains from "
                         f"{100 * gains[lo]:+.2f} points ({usable[lo]['condition']}) to "
                         f"{100 * gains[hi]:+.2f} ({usable[hi]['condition']})).")  # fmt: skip
        else:
            lines.append(f"{title}: too few conditions ({len(usable)}) to say whether the gain "
                         "grows with difficulty.")  # fmt: skip
        steps_line = steps_statement(pair, summary)
        if steps_line:
            lines.append(steps_line)
    return lines


def steps_statement(pair: str, summary: dict) -> str:
    """What more steps buy ``pair``'s diffusion model on the clean test set: its headline sampler's
    top-1 at each step count, and the fewest steps within 0.5 points of the headline's (or, where
    fewer steps score higher, by how much). Empty where there is no curve to read."""
    rows = [r for r in summary["rows"] if r["pair"] == pair and r["condition"] == "clean"
            and r["role"] == "diffusion"]  # fmt: skip
    headline = next((e for e in summary["headline"] if e["pair"] == pair
                     and e["condition"] == "clean" and e["diffusion"].get("top1")), None)  # fmt: skip
    if not headline:
        return ""
    label, top_steps = headline["diffusion"]["sampler"], headline["diffusion"]["steps"]
    curve = sorted((r["steps"], r["top1"]["mean"]) for r in rows if r["sampler"] == label)
    if len(curve) < 2:
        return ""
    best = dict(curve)[top_steps]
    parts = [f"{s} step{'s' * (s > 1)} {100 * v:.2f}%" for s, v in curve]
    head = f"{PAIRS[pair].title}: clean top-1 of {label} against steps: {', '.join(parts)}; "
    peak_steps, peak = max(curve, key=lambda sv: (sv[1], -sv[0]))
    if peak - best > 0.005:  # more steps cost accuracy
        return head + (f"more steps do not help: {peak_steps} step{'s' * (peak_steps > 1)} "
                       f"score{'s' * (peak_steps == 1)} {100 * (peak - best):.2f} points above "
                       f"{top_steps}.")  # fmt: skip
    enough = next((s for s, v in curve if best - v <= 0.005), top_steps)
    return head + (f"{enough} step{' comes' if enough == 1 else 's come'} within 0.5 points of "
                   f"{top_steps}.")  # fmt: skip
