"""Tables of the uncertainty benchmark (the ``:uncertainty`` variant) from its results.

    python benchmarks/uncertainty_table.py --archive runs/unc_didirn_s0 [more run dirs]
    python benchmarks/uncertainty_table.py               # the tables of the archived results
    python benchmarks/uncertainty_table.py --per-seed    # one column per run instead

``--archive`` copies each run's ``"uncertainty"`` entry of ``eval_results.json`` (with the run's
baselines, assessed under the same protocol) to ``benchmarks/results/uncertainty/<name>.json``,
adding the training seed of the run and of each baseline (from their ``config.json``). The tables
(markdown, for ``docs/results.md``) are printed from everything archived there: per model, the
mean and sample standard deviation over training seeds; then, per pair, the diffusion model's
difference to its baseline paired by seed and the number of seeds on which it is the better one.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
from collections.abc import Callable

ARCHIVE = pathlib.Path(__file__).resolve().parent / "results" / "uncertainty"

# (label, value of one result or None, scale for printing, digits, +1 higher is better / -1 lower)
Figure = tuple[str, Callable[[dict], "float | None"], float, int, int]


def _mce(key: str) -> Callable[[dict], float | None]:
    # The baseline is the reference of mCE and relative mCE: 1 by definition.
    return lambda r: r["corruptions"][key] if not r["_baseline"] else 1.0


def _after(key: str) -> Callable[[dict], float | None]:
    return lambda r: (r["calibration"]["after"] or {}).get(key)


def figures(ood_sets: list[str]) -> list[Figure]:
    """Every figure of the tables, in order."""
    return [
        ("top1", lambda r: r["top1"], 100, 2, 1),
        ("mean CE", lambda r: r["corruptions"]["mean_corruption_error"], 100, 2, -1),
        ("mCE", _mce("mce"), 100, 2, -1),
        ("rel. mCE", _mce("relative_mce"), 100, 2, -1),
        *[(f"AUROC {k}", lambda r, k=k: r["ood"][k]["max_probability"]["auroc"], 1, 3, 1)
          for k in ood_sets],
        *[(f"AUROC {k} (MI)", lambda r, k=k: r["ood"][k]["mutual_information"]["auroc"], 1, 3, 1)
          for k in ood_sets],
        ("AURC", lambda r: r["selective"]["aurc"], 100, 2, -1),
        ("acc@95%", lambda r: r["selective"]["accuracy_at_coverage_0.95"], 100, 2, 1),
        ("ECE", lambda r: r["calibration"]["before"]["ece"], 100, 2, -1),
        ("ECE (T)", _after("ece"), 100, 2, -1),
        ("NLL", lambda r: r["calibration"]["before"]["nll"], 1, 3, -1),
        ("NLL (T)", _after("nll"), 1, 3, -1),
        ("Brier", lambda r: r["calibration"]["before"]["brier"], 1, 3, -1),
        ("T", lambda r: r["calibration"]["temperature"], 1, 2, 0),
        ("CARD uncertain", lambda r: r["samples"]["card_uncertain_fraction"], 100, 1, 0),
        ("acc CARD-certain", lambda r: r["samples"]["accuracy_card_certain"], 100, 1, 0),
        ("acc CARD-uncertain", lambda r: r["samples"]["accuracy_card_uncertain"], 100, 1, 0),
    ]  # fmt: skip


def rows(result: dict, name: str) -> list[dict]:
    """The rows of one archived result: the run, then its baselines; each holds ``model``,
    ``pair`` (the run's model), ``seed``, ``name`` and the value (or None) of every figure."""
    out, pair = [], f"{result['model']} ({result['sampler']})"
    for r in (result, *result.get("baselines", [])):
        r = {**r, "_baseline": r is not result}
        row = {"model": f"{r['model']} ({r['sampler']})", "pair": pair,
               "seed": r.get("train_seed"), "name": name}  # fmt: skip
        for label, value, *_ in figures(list(result["ood"])):
            row[label] = value(r)
        out.append(row)
    return out


def _fmt(x: float | None, scale: float, digits: int) -> str:
    return "-" if x is None else f"{scale * x:.{digits}f}"


def _spec(table: list[dict]) -> dict[str, tuple[float, int, int]]:
    keys = [k for k in table[0] if k not in ("model", "pair", "seed", "name")]
    return {label: (s, d, b) for label, _, s, d, b in figures(_ood_sets(keys)) if label in keys}


def _ood_sets(keys: list[str]) -> list[str]:
    return [k[len("AUROC ") :] for k in keys if k.startswith("AUROC ") and not k.endswith("(MI)")]


def per_seed_markdown(table: list[dict]) -> str:
    """One column per run (model, seed), one row per figure."""
    heads = [f"{row['model']}, seed {row['seed']} ({row['name']})" for row in table]
    lines = ["| | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for label, (scale, digits, _) in _spec(table).items():
        cells = [_fmt(row[label], scale, digits) for row in table]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_sd(values: list[float], scale: float, digits: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return _fmt(values[0], scale, digits)
    return f"{_fmt(statistics.mean(values), scale, digits)} ± {_fmt(statistics.stdev(values), scale, digits)}"  # noqa: E501


def summary_markdown(table: list[dict]) -> str:
    """One column per model: mean ± sample standard deviation over its training seeds."""
    models = list(dict.fromkeys(row["model"] for row in table))
    by_model = {m: [row for row in table if row["model"] == m] for m in models}
    heads = [f"{m}, {len(by_model[m])} seeds" for m in models]
    lines = ["| | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for label, (scale, digits, _) in _spec(table).items():
        cells = [_mean_sd([r[label] for r in by_model[m] if r[label] is not None], scale, digits)
                 for m in models]  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(table: list[dict]) -> dict[str, dict[str, tuple[list[float], int]]]:
    """Per pair, per figure with a direction: the diffusion model minus its baseline on each
    training seed they share, and on how many of those seeds the diffusion model is better."""
    out: dict[str, dict[str, tuple[list[float], int]]] = {}
    for pair in dict.fromkeys(row["pair"] for row in table):
        runs = {r["seed"]: r for r in table if r["pair"] == pair and r["model"] == pair}
        bases = {r["seed"]: r for r in table if r["pair"] == pair and r["model"] != pair}
        seeds = sorted(set(runs) & set(bases), key=str)
        out[pair] = {}
        for label, (_, _, better) in _spec(table).items():
            diffs = [runs[s][label] - bases[s][label] for s in seeds
                     if better and runs[s][label] is not None and bases[s][label] is not None]  # fmt: skip
            if diffs:
                out[pair][label] = (diffs, sum(better * d > 0 for d in diffs))
    return out


def paired_markdown(table: list[dict]) -> str:
    """One column per pair: mean ± sd of the paired difference, and the seeds it is better on."""
    gains = paired(table)
    pairs = list(gains)
    lines = ["| diffusion model - baseline | " + " | ".join(pairs) + " |",
             "|---|" + "---|" * len(pairs)]  # fmt: skip
    spec = _spec(table)
    for label in [k for k, (_, _, b) in spec.items() if b]:
        scale, digits, _ = spec[label]
        cells = []
        for p in pairs:
            diffs, wins = gains[p].get(label, ([], 0))
            cells.append(
                f"{_mean_sd(diffs, scale, digits)} ({wins}/{len(diffs)})" if diffs else "-"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _train_seed(run_dir: str) -> int | None:
    config = pathlib.Path(run_dir) / "config.json"
    return json.loads(config.read_text()).get("seed") if config.is_file() else None


def archive(run: str) -> pathlib.Path:
    """Copy ``run``'s uncertainty results (and its baselines') into the archive, with seeds."""
    result = json.loads((pathlib.Path(run) / "eval_results.json").read_text())["uncertainty"]
    result["train_seed"] = _train_seed(run)
    for base in result.get("baselines", []):
        base["train_seed"] = _train_seed(base["run"])
    out = ARCHIVE / f"{pathlib.Path(run).name}.json"
    out.write_text(json.dumps(result, indent=1))
    return out


def load_table() -> list[dict]:
    """The rows of every archived result, ordered by pair, then model, then seed."""
    table = []
    for path in sorted(ARCHIVE.glob("*.json")):
        table += rows(json.loads(path.read_text()), path.stem)
    return sorted(table, key=lambda r: (r["pair"], r["model"] != r["pair"], str(r["seed"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", nargs="*", default=[], metavar="RUN_DIR",
                        help="copy these runs' uncertainty results into the archive first")  # fmt: skip
    parser.add_argument("--per-seed", action="store_true", help="one column per run")
    args = parser.parse_args()
    ARCHIVE.mkdir(parents=True, exist_ok=True)
    for run in args.archive:
        archive(run)
    table = load_table()
    if not table:
        raise SystemExit(f"nothing archived in {ARCHIVE}; pass --archive RUN_DIR")
    if args.per_seed:
        print(per_seed_markdown(table))
    else:
        print(summary_markdown(table), "", paired_markdown(table), sep="\n")


if __name__ == "__main__":
    main()
