"""The robustness study: does label-space diffusion beat a standard classifier with the same body?

Two pairs on Fashion-MNIST, each pair with the same width, depth, stem, data pipeline, optimizer,
batch size and number of optimizer steps (``configs/``):

* ``didirn-resnet``: DiDiRN-18 (DiDiCM, score entropy) against ResNet-18 (cross-entropy), width 16,
  both with the reference stem (conv3x3/s1 + maxpool), so the two bodies cost the same per image.
* ``addvit-vit``: ADD-ViT (Gaussian diffusion on one-hot labels) against the linear-head ViT, the
  same encoder (patch 4, width 96, depth 4).

Conditions, each trained AND tested under it (the classifier only ever sees ``y = h(x)``):
``clean``; ``noise1/3/5`` (Gaussian noise, std 0.08 / 0.18 / 0.38); ``lowres14``, ``lowres7``
(down to 14 px / 7 px and back up to 28 px); ``ratio0.1``, ``ratio0.01`` (10% / 1% of the training
images of each class; clean test set). The budget is the same number of optimizer steps for every
run: ``--epochs E`` is ``ceil(E * 60,000 / batch)`` steps whatever the ratio (at ratio 0.01 that is
100 E passes over the 600 kept images).

Samplers of the diffusion models: CP (euler, analytic) and CL (10 chains) at 1, 2, 4, 8 steps;
ADD with and without guidance (scale 2), argmax against softmax "to one". The headline comparison
uses one sampler fixed in advance, the reference's default: CP euler at 8 steps (DiDiRN) and ADD
argmax without guidance at 8 steps (ADD-ViT). Metrics: top-1, top-5, NLL, ECE; mean and spread
(sample standard deviation) over seeds; gains are paired by seed.

    python benchmarks/robustness.py --quick          # reduced grid, 33.3 min measured on 2 idle cores
    python benchmarks/robustness.py                  # the whole grid (many hours; resumable)
    python benchmarks/robustness.py --plan           # the runs, which are done, estimated time
    python benchmarks/robustness.py --report-only    # rebuild the tables and plots from the runs
    python benchmarks/robustness.py --smoke --out /tmp/study   # end to end in a few minutes

Every run lives in ``OUT/<pair>/<condition>/<config>_seed<k>``; a run whose ``eval_results.json``
exists is skipped (an interrupted run resumes from its checkpoint), so the study can be spread over
sessions (``--time-budget-min`` stops starting new runs). A run made with other settings (steps,
samplers, test examples) is never silently reused: the driver stops and names it. After the runs the
driver writes ``OUT/summary.json`` and regenerates its block of the "Robustness study" section of
``docs/results.md`` (``--results``) with the tables, plots (``docs/figures/robustness_<grid>/``)
and an automatic statement of where the claim holds; missing cells read "not run".

Run directories hold checkpoints and are not committed. So that the tables can be rebuilt (and the
study continued) on another machine, each finished run's three small JSON files (spec, records,
timings) are also copied to an archive that is committed, ``benchmarks/results/robustness_<grid>/``
(``--archive``), laid out like ``OUT``. A run found in either place counts as done.

This file is the command line; the study itself (grid and configs, runs and archive, cost estimate,
statistics, verdict, report) is the library package ``didiff_jax.study``.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

import ml_collections

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the configs package lives at the repository root
    sys.path.insert(0, str(ROOT))

from didiff_jax import distributed, evaluate, train  # noqa: E402
from didiff_jax.study import cost, report  # noqa: E402
from didiff_jax.study.grid import (  # noqa: E402
    CONDITIONS,
    GRIDS,
    PAIRS,
    Cell,
    Grid,
    build_config,
    cells,
    report_grid,
)
from didiff_jax.study.io import write_json  # noqa: E402
from didiff_jax.study.runner import archive_run, collect, finished_dir, run_study  # noqa: E402

# ---------------------------------------------------------------------------------- running


def default_archive(grid: Grid) -> pathlib.Path | None:
    """Where the committed copy of ``grid``'s finished runs lives (none for the smoke grid)."""
    return (
        None if grid.tag == "smoke" else ROOT / "benchmarks" / "results" / f"robustness_{grid.tag}"
    )


def run_cell(cell: Cell, config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """Train (or resume) and evaluate one run; writes ``eval_results.json`` (the records of its
    test condition, as the main job writes them) and ``study_run.json`` (timings, machine).
    Returns the latter."""
    resumed = (workdir / "checkpoints").exists()
    t0 = time.time()
    run = train.train(config, str(workdir))
    if run["stopped_early"]:
        raise SystemExit(f"{workdir}: stopped by SIGTERM after a checkpoint; rerun to resume")
    t1 = time.time()
    records, _ = evaluate.sweep(config, run["graphdef"], run["state"], run["info"], run["mesh"],
                                run_dir=str(workdir))  # fmt: skip
    meta = {"train_s": t1 - t0, "eval_s": time.time() - t1, "resumed": resumed,
            "machine": distributed.describe_machine(), "command": " ".join(["python", *sys.argv])}  # fmt: skip
    write_json(workdir / "study_run.json", meta)
    write_json(workdir / "eval_results.json", {"records": records})
    return meta


# -------------------------------------------------------------------------------------- main


def grid_from_args(args: argparse.Namespace) -> Grid:
    """The grid of the command line: the named grid (full, quick, smoke) with the selection and
    budget flags of ``args`` applied; an unknown pair or condition stops with the known ones."""
    base = GRIDS["smoke" if args.smoke else "quick" if args.quick else "full"]
    grid = dataclasses.replace(
        base,
        pairs=tuple(args.pairs or base.pairs),
        conditions=tuple(args.conditions or base.conditions),
        seeds=tuple(args.seeds if args.seeds is not None else base.seeds),
        epochs=args.epochs if args.epochs is not None else base.epochs,
        eval_examples=args.eval_examples if args.eval_examples is not None else base.eval_examples,
    )
    for name, known, values in (("--pairs", PAIRS, grid.pairs),
                                ("--conditions", CONDITIONS, grid.conditions)):  # fmt: skip
        bad = [v for v in values if v not in known]
        if bad:
            raise SystemExit(f"error: unknown {name} {bad}; known: {', '.join(known)}")
    return grid


def report_command(args: argparse.Namespace) -> str:
    """The command that rebuilds (and resumes) the whole report: the grid and budget flags of
    ``args``, not its selection of pairs, conditions, seeds or time."""
    flags = ["--quick"] * args.quick + ["--smoke"] * args.smoke
    for flag, value in (("--epochs", args.epochs), ("--eval-examples", args.eval_examples),
                        ("--out", args.out), ("--archive", args.archive),
                        ("--results", args.results)):  # fmt: skip
        if value is not None:
            flags += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return " ".join(["python benchmarks/robustness.py", *flags])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="one seed, DiDiRN vs ResNet, clean/noise3/lowres7/ratio0.1, 1 epoch, "
                           "5,000 test images, CP samplers only (33 min measured on 2 idle cores)")  # fmt: skip
    mode.add_argument("--smoke", action="store_true",
                      help="the configs' smoke variants (a few steps): checks the driver end to end")  # fmt: skip
    parser.add_argument("--pairs", nargs="+", help=f"of {', '.join(PAIRS)}")
    parser.add_argument("--conditions", nargs="+", help=f"of {', '.join(CONDITIONS)}")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--epochs", type=float, default=None,
                        help="budget per run in passes over the 60,000 training images, as "
                             "optimizer steps (default: each pair's config, 4 and 2)")  # fmt: skip
    parser.add_argument("--eval-examples", type=int, default=None,
                        help="test images per run (0: all 10,000)")  # fmt: skip
    parser.add_argument("--out", default=None,
                        help="run directory of the study (default runs/study_<grid>)")  # fmt: skip
    parser.add_argument("--archive", default=None,
                        help="committed copy of the finished runs' JSON files (default "
                             "benchmarks/results/robustness_<grid>; 'none' for no archive)")  # fmt: skip
    parser.add_argument("--results", default=None,
                        help="markdown file to update (default docs/results.md; smoke: OUT/report.md)")  # fmt: skip
    parser.add_argument(
        "--report-only", action="store_true", help="no training: rebuild the report"
    )
    parser.add_argument("--plan", action="store_true",
                        help="list the runs, their state and estimated time; run nothing")  # fmt: skip
    parser.add_argument("--time-budget-min", type=float, default=None,
                        help="start no new run after this many minutes")  # fmt: skip
    args = parser.parse_args(argv)
    grid = grid_from_args(args)
    out = pathlib.Path(args.out or ROOT / "runs" / f"study_{grid.tag}")
    results = pathlib.Path(args.results or (out / "report.md" if grid.tag == "smoke"
                                            else ROOT / "docs" / "results.md"))  # fmt: skip
    archive = (None if args.archive == "none" else
               pathlib.Path(args.archive) if args.archive else default_archive(grid))  # fmt: skip

    if args.plan:
        total = 0.0
        for cell in cells(grid):
            config = build_config(cell, grid)
            state = ("done" if finished_dir(cell, out, archive) is not None else
                     "partly trained" if (cell.workdir(out) / "checkpoints").exists() else "to run")  # fmt: skip
            est = cost.estimate_seconds(config)
            total += 0.0 if state == "done" else est
            print(f"{cell.workdir(out)}: {state}, ~{est / 60:.1f} min")
        print(f"remaining, estimated for 2 idle cores: {report.hours(total)}")
        machine = distributed.describe_machine()
        speed = cost.machine_speed(grid, collect(grid, out, archive), machine)
        if speed is not None:
            ratio, n = speed
            print(f"on this machine ({machine}) {n} finished runs took {ratio:.2f}x the "
                  f"estimate (median): remaining at that rate {report.hours(ratio * total)}")  # fmt: skip
        return
    if not args.report_only:
        t0 = time.time()
        budget = None if args.time_budget_min is None else 60 * args.time_budget_min
        status = run_study(grid, out, runner=run_cell, archive=archive, time_budget_s=budget)
        ran = sum(v == "ran" for v in status.values())
        print(f"{ran} runs in {report.hours(time.time() - t0)}; "
              f"{sum(v == 'not started' for v in status.values())} left for another session")  # fmt: skip
    if archive is not None:  # runs made before the archive existed, or by an older driver
        copied = sum(archive_run(cell, out, archive) for cell in cells(grid))
        if copied:
            print(f"archived {copied} finished runs to {archive}")
    report.write_report(report_grid(grid), out, results, report_command(args), archive)
    print(f"report: {results} (summary: {out / 'summary.json'})")


if __name__ == "__main__":
    main()
