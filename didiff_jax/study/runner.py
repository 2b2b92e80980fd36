"""Running the study's cells, resuming and archiving them, and collecting the finished ones.

Every run lives in ``OUT/<pair>/<condition>/<config>_seed<k>``. A run whose ``eval_results.json``
exists is done and skipped; one made with other settings is never silently reused (its
``study_spec.json`` must match). Finished runs' small JSON files are copied to an archive laid out
like ``OUT``, so that another machine can rebuild the report and continue the study. Training and
evaluating one cell is the caller's ``Runner`` (the driver's trains and evaluates with the main
job's code; the tests' writes synthetic records).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from collections.abc import Callable

import ml_collections

from didiff_jax.study.grid import Cell, Grid, build_config, cells
from didiff_jax.study.io import write_json

ARCHIVED = ("study_spec.json", "eval_results.json", "study_run.json")
"""The files of a finished run that the archive keeps (a few kB each)."""

Runner = Callable[[Cell, ml_collections.ConfigDict, pathlib.Path], dict]
"""``runner(cell, config, workdir) -> meta``: trains (or resumes) and evaluates one run in
``workdir``, writing its ``eval_results.json`` (the records of its test condition) and
``study_run.json`` (``meta``: ``train_s``, ``eval_s``, ``resumed``, ``machine``, ``command``)."""


def cell_spec(cell: Cell, config: ml_collections.ConfigDict) -> dict:
    """What a finished run must have been made with to be reused for ``cell``."""
    return {
        "pair": cell.pair,
        "role": cell.role,
        "config": cell.config_name,
        "condition": cell.condition,
        "seed": cell.seed,
        "num_steps": int(config.num_steps),
        "batch_size": int(config.batch_size),
        "samplers": [dict(e) for e in config.eval.samplers],
        "eval_examples": int(config.eval.max_examples),
    }


class StudyMismatch(RuntimeError):
    """A run directory holds a run made with other settings than the ones asked for."""


def check_spec(workdir: pathlib.Path, spec: dict) -> None:
    """Stop if ``workdir`` was started with another spec (a reused run must be the same run)."""
    path = workdir / "study_spec.json"
    if not path.exists():
        if (workdir / "eval_results.json").exists():
            raise StudyMismatch(f"{workdir} holds results but no study_spec.json: not a run of "
                                "this driver; move it away or use another --out")  # fmt: skip
        return
    stored = json.loads(path.read_text())
    stored = json.loads(json.dumps(stored))  # tuples and lists compare alike after a round trip
    wanted = json.loads(json.dumps(spec))
    diff = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
    if diff:
        shown = "; ".join(f"{k}: ran with {a!r}, asked for {b!r}" for k, (a, b) in diff.items())
        raise StudyMismatch(f"{path}: {shown}. Use another --out (or delete {workdir}) to run "
                            "these settings")  # fmt: skip


def finished_dir(cell: Cell, out: pathlib.Path, archive: pathlib.Path | None
                 ) -> pathlib.Path | None:  # fmt: skip
    """The directory holding ``cell``'s finished results: its run directory, else its archived
    copy, else None."""
    for root in (out, archive):
        if root is not None and (cell.workdir(root) / "eval_results.json").exists():
            return cell.workdir(root)
    return None


def archive_run(cell: Cell, out: pathlib.Path, archive: pathlib.Path) -> bool:
    """Copy ``cell``'s finished run from ``out`` to ``archive`` (each file atomically, results
    last, so an archived ``eval_results.json`` means the copy is complete). Returns whether
    anything was copied."""
    src, dst = cell.workdir(out), cell.workdir(archive)
    if not (src / "eval_results.json").exists():
        return False
    wanted = [n for n in ARCHIVED if (src / n).exists()]
    if all((dst / n).exists() and (dst / n).read_bytes() == (src / n).read_bytes() for n in wanted):
        return False
    dst.mkdir(parents=True, exist_ok=True)
    for name in sorted(wanted, key=lambda n: n == "eval_results.json"):
        tmp = dst / f"{name}.tmp"
        tmp.write_bytes((src / name).read_bytes())
        os.replace(tmp, dst / name)
    return True


def run_study(grid: Grid, out: pathlib.Path, *, runner: Runner,
              archive: pathlib.Path | None = None, time_budget_s: float | None = None,
              log: Callable[[str], None] = print) -> dict[Cell, str]:  # fmt: skip
    """Run (with ``runner``) every cell of ``grid`` that has no ``eval_results.json`` yet, under
    ``out`` or in ``archive`` (checking the settings of those that have one, and of half-done
    ones), and copy each new run to ``archive``. Stops starting new runs once ``time_budget_s`` has
    passed. Returns each cell's status: 'done' (found), 'ran', or 'not started'."""
    todo = cells(grid)
    specs = {}
    for cell in todo:  # check every existing run before spending any time
        config = build_config(cell, grid)
        specs[cell] = (config, cell_spec(cell, config))
        for root in (out, archive):
            if root is not None:
                check_spec(cell.workdir(root), specs[cell][1])
    status, t0 = {}, time.time()
    for i, cell in enumerate(todo, start=1):
        workdir = cell.workdir(out)
        if finished_dir(cell, out, archive) is not None:
            status[cell] = "done"
            continue
        if time_budget_s is not None and time.time() - t0 > time_budget_s:
            status[cell] = "not started"
            continue
        config, spec = specs[cell]
        log(f"[{i}/{len(todo)}] {workdir}: {spec['num_steps']} steps of {spec['batch_size']}, "
            f"{len(config.eval.samplers)} sampler entries")  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        write_json(workdir / "study_spec.json", spec)
        meta = runner(cell, config, workdir)
        log(f"    train {meta.get('train_s', 0):.0f} s, eval {meta.get('eval_s', 0):.0f} s")
        if archive is not None:
            archive_run(cell, out, archive)
        status[cell] = "ran"
    return status


def collect(grid: Grid, out: pathlib.Path, archive: pathlib.Path | None = None
            ) -> dict[Cell, dict]:  # fmt: skip
    """The finished runs of ``grid`` under ``out`` (else in ``archive``): cell -> {"records",
    "meta"}. Runs made with other settings than ``grid`` asks for are left out (with a warning)."""
    found = {}
    for cell in cells(grid):
        workdir = finished_dir(cell, out, archive)
        if workdir is None:
            continue
        path = workdir / "eval_results.json"
        try:
            check_spec(workdir, cell_spec(cell, build_config(cell, grid)))
        except StudyMismatch as e:
            print(f"warning: left out of the report: {e}", file=sys.stderr)
            continue
        meta_path = workdir / "study_run.json"
        found[cell] = {
            "records": json.loads(path.read_text())["records"],
            "meta": json.loads(meta_path.read_text()) if meta_path.exists() else {},
        }
    return found
