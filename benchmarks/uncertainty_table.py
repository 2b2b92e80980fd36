"""Tables of the uncertainty benchmark (the ``:uncertainty`` variant) from its results.

    python benchmarks/uncertainty_table.py --archive runs/unc_didirn_s0 [more run dirs]
    python benchmarks/uncertainty_table.py               # the tables of the archived results

``--archive`` copies each run's ``"uncertainty"`` entry of ``eval_results.json`` (with the run's
baselines, assessed under the same protocol) to ``benchmarks/results/uncertainty/<name>.json``;
the tables (markdown, for ``docs/results.md``) are printed from everything archived there: one row
per model and seed, the diffusion model first, its paired baseline after it.
"""

from __future__ import annotations

import argparse
import json
import pathlib

ARCHIVE = pathlib.Path(__file__).resolve().parent / "results" / "uncertainty"


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def rows(result: dict, seed: str) -> list[dict]:
    """The table rows of one archived result: the run, then its baselines."""
    out = []
    for r in (result, *result.get("baselines", [])):
        c, cal, s = r["corruptions"], r["calibration"], r["samples"]
        after = cal["after"] or {}
        out.append({
            "model": f"{r['model']} ({r['sampler']})", "seed": seed, "top1": _pct(r["top1"]),
            "mean CE": _pct(c["mean_corruption_error"]),
            "mCE": _pct(c["mce"]) if c["mce"] is not None else ("100.00" if r is not result else "-"),
            "rel. mCE": _pct(c["relative_mce"]) if c["relative_mce"] is not None else (
                "100.00" if r is not result else "-"),
            **{f"AUROC {k}": _num(v["max_probability"]["auroc"]) for k, v in r["ood"].items()},
            **{f"AUROC {k} (MI)": _num(v["mutual_information"]["auroc"]) for k, v in r["ood"].items()},
            "AURC": _pct(r["selective"]["aurc"]),
            "acc@95%": _pct(r["selective"]["accuracy_at_coverage_0.95"]),
            "ECE": _pct(cal["before"]["ece"]), "ECE (T)": _pct(after.get("ece")),
            "NLL": _num(cal["before"]["nll"]), "NLL (T)": _num(after.get("nll")),
            "Brier": _num(cal["before"]["brier"]), "T": _num(cal["temperature"], 2),
            "CARD uncertain": _pct(s["card_uncertain_fraction"], 1),
            "acc certain / uncertain": f"{_pct(s['accuracy_card_certain'], 1)} / "
                                       f"{_pct(s['accuracy_card_uncertain'], 1)}",
        })  # fmt: skip
    return out


def markdown(table: list[dict]) -> str:
    """One column per run (model, seed), one row per figure."""
    heads = [f"{row['model']}, seed {row['seed']}" for row in table]
    lines = ["| | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for key in table[0]:
        if key not in ("model", "seed"):
            lines.append(f"| {key} | " + " | ".join(str(row.get(key, "-")) for row in table) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", nargs="*", default=[], metavar="RUN_DIR",
                        help="copy these runs' uncertainty results into the archive first")  # fmt: skip
    args = parser.parse_args()
    ARCHIVE.mkdir(parents=True, exist_ok=True)
    for run in args.archive:
        result = json.loads((pathlib.Path(run) / "eval_results.json").read_text())["uncertainty"]
        (ARCHIVE / f"{pathlib.Path(run).name}.json").write_text(json.dumps(result, indent=1))
    table = []
    for path in sorted(ARCHIVE.glob("*.json")):
        result = json.loads(path.read_text())
        table += rows(result, str(result["protocol"].get("seed", 0)) + f" ({path.stem})")
    if not table:
        raise SystemExit(f"nothing archived in {ARCHIVE}; pass --archive RUN_DIR")
    print(markdown(table))


if __name__ == "__main__":
    main()
