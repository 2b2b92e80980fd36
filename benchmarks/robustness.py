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
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib
import itertools
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the configs package lives at the repository root
    sys.path.insert(0, str(ROOT))

if str(ROOT / "benchmarks") not in sys.path:  # the throughput benchmark, for its writers
    sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import write_block, write_json  # noqa: E402  (one set of writers for both)

from didiff_jax import distributed  # noqa: E402
from didiff_jax.data import corruptions  # noqa: E402

FASHION_MNIST_TRAIN = 60_000
"""Training images of Fashion-MNIST: ``--epochs`` counts passes over all of them."""

IMAGE_SIZE = 28


# --------------------------------------------------------------------------------- the grid


@dataclasses.dataclass(frozen=True)
class Condition:
    """A training-and-test condition: the config variant that trains under it and the test
    condition (``kind``, ``severity``) of the evaluation (``clean`` for the training ratios)."""

    name: str
    variant: str
    kind: str
    severity: int
    label: str


def _lowres_severity(px: int) -> int:
    """The ``downsample`` severity that takes a 28 px image to exactly ``px`` px (see
    ``corruptions.DOWNSAMPLE_FACTOR``); a missing one is an error, not an approximation."""
    for s, f in enumerate(corruptions.DOWNSAMPLE_FACTOR, start=1):
        if max(1, math.floor(IMAGE_SIZE / f + 0.5)) == px:
            return s
    raise ValueError(f"no downsample severity takes {IMAGE_SIZE} px to {px} px")


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("clean", "", "clean", 0, "clean"),
        *(
            Condition(
                f"noise{s}",
                f"noise={s}",
                "gaussian_noise",
                s,
                f"noise std {corruptions.NOISE_SIGMA[s - 1]:g}",
            )  # fmt: skip
            for s in (1, 3, 5)
        ),
        *(
            Condition(
                f"lowres{px}",
                f"lowres={_lowres_severity(px)}",
                "downsample",
                _lowres_severity(px),
                f"{px} px",
            )  # fmt: skip
            for px in (14, 7)
        ),
        Condition("ratio0.1", "ratio=0.1", "clean", 0, "10% data"),
        Condition("ratio0.01", "ratio=0.01", "clean", 0, "1% data"),
    )
}
"""The study's conditions, in table order."""


@dataclasses.dataclass(frozen=True)
class Pair:
    diffusion: str  # config module under configs/
    baseline: str
    title: str


PAIRS: dict[str, Pair] = {
    "didirn-resnet": Pair(
        "fashion_mnist_didirn",
        "fashion_mnist_resnet",
        "DiDiRN-18 vs ResNet-18 (width 16, reference stem)",
    ),  # fmt: skip
    "addvit-vit": Pair(
        "fashion_mnist_add_vit", "fashion_mnist_vit", "ADD-ViT vs ViT (patch 4, width 96, depth 4)"
    ),  # fmt: skip
}

_CP = {"name": "cp", "mode": "min"}
_CL = {"name": "cl", "method": "euler", "num_chains": 10}
_ADD = {"name": "onehot"}
SAMPLERS: dict[tuple[str, str], list[dict]] = {
    ("didicm", "full"): [
        {**_CP, "method": "euler", "steps": (1, 2, 4, 8)},
        {**_CP, "method": "analytic", "steps": (1, 2, 4, 8)},
        {**_CL, "steps": (1, 2, 4, 8)},
    ],
    ("didicm", "quick"): [  # no CL: 10 chains cost 10 CP steps, and the grid must fit 40 min
        {**_CP, "method": "euler", "steps": (1, 2, 4, 8)},
        {**_CP, "method": "analytic", "steps": (8,)},
    ],
    ("didicm", "smoke"): [
        {**_CP, "method": "euler", "steps": (1, 2)},
        {**_CP, "method": "analytic", "steps": (2,)},
        {**_CL, "steps": (1,)},
    ],
    ("add", "full"): [
        {**_ADD, "to_one": "argmax", "guidance_scale": 1.0, "steps": (1, 2, 4, 8)},
        {**_ADD, "to_one": "softmax", "guidance_scale": 1.0, "steps": (8,)},
        {**_ADD, "to_one": "argmax", "guidance_scale": 2.0, "steps": (8,)},
        {**_ADD, "to_one": "softmax", "guidance_scale": 2.0, "steps": (8,)},
    ],
    ("add", "quick"): [
        {**_ADD, "to_one": "argmax", "guidance_scale": 1.0, "steps": (1, 8)},
        {**_ADD, "to_one": "softmax", "guidance_scale": 1.0, "steps": (8,)},
        {**_ADD, "to_one": "argmax", "guidance_scale": 2.0, "steps": (8,)},
    ],
    ("add", "smoke"): [
        {**_ADD, "to_one": "argmax", "guidance_scale": 1.0, "steps": (1, 2)},
        {**_ADD, "to_one": "softmax", "guidance_scale": 1.0, "steps": (2,)},
        {**_ADD, "to_one": "argmax", "guidance_scale": 2.0, "steps": (2,)},
    ],
}
"""Sampler entries (``config.eval.samplers``) of the diffusion models per objective and grid."""

HEADLINE_SAMPLER = {"didicm": "cp-euler", "add": "onehot-argmax", "classifier": "classifier"}
"""The sampler each objective is compared with, fixed in advance (at its largest step count)."""


@dataclasses.dataclass(frozen=True)
class Grid:
    """What to run: the sampler level ``tag`` ('full', 'quick' or 'smoke'), the pairs, conditions,
    seeds, the budget (``epochs``; None: each pair's config default) and test examples (0: all)."""

    tag: str
    pairs: tuple[str, ...]
    conditions: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: float | None
    eval_examples: int


GRIDS = {
    "full": Grid("full", tuple(PAIRS), tuple(CONDITIONS), (0, 1, 2), None, 0),
    "quick": Grid(
        "quick", ("didirn-resnet",), ("clean", "noise3", "lowres7", "ratio0.1"), (0,), 1.0, 5000
    ),  # fmt: skip
    "smoke": Grid("smoke", ("didirn-resnet", "addvit-vit"), ("clean", "noise3"), (0,), None, 32),
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the study: a model (``role`` 'diffusion' or 'baseline' of ``pair``) trained and
    tested under ``condition`` with ``seed``."""

    pair: str
    role: str
    condition: str
    seed: int

    @property
    def config_name(self) -> str:
        return getattr(PAIRS[self.pair], self.role)

    def workdir(self, out: pathlib.Path) -> pathlib.Path:
        return out / self.pair / self.condition / f"{self.config_name}_seed{self.seed}"


def cells(grid: Grid) -> list[Cell]:
    """The runs of ``grid``, seed-major: all of seed 0 first, so a partly run study already has
    complete tables for its first seeds."""
    return [Cell(p, role, c, s) for s in grid.seeds for p in grid.pairs for c in grid.conditions
            for role in ("diffusion", "baseline")]  # fmt: skip


# ------------------------------------------------------------------------------- the configs


def _steps_label(entry: dict) -> str:
    import ml_collections

    from didiff_jax.evaluate import sampler_label

    return sampler_label(ml_collections.ConfigDict(entry))


def build_config(cell: Cell, grid: Grid):
    """The config of ``cell``: the pair's config file with the condition's variant (and ``smoke``
    for the smoke grid), the seed, the budget, the study's samplers and its one test condition."""
    module = importlib.import_module(f"configs.{cell.config_name}")
    cond = CONDITIONS[cell.condition]
    variants = [v for v in (cond.variant, "smoke" if grid.tag == "smoke" else "") if v]
    c = module.get_config(",".join(variants) or None)
    c.seed = cell.seed
    c.data.ratio_seed = cell.seed  # the kept subset varies with the seed (the same within a pair)
    if grid.tag != "smoke":  # the smoke variant keeps its 4 steps
        epochs = grid.epochs if grid.epochs is not None else pair_epochs(cell.pair)
        c.num_steps = int(math.ceil(epochs * FASHION_MNIST_TRAIN / c.batch_size))
        c.eval.max_examples = grid.eval_examples
    objective = c.objective.name
    c.eval.samplers = [
        dict(e)
        for e in ([{"name": "classifier"}] if objective == "classifier"
                  else SAMPLERS[(objective, grid.tag)])
    ]  # fmt: skip
    c.eval.after_train = False
    c.eval.clean = cond.kind == "clean"
    c.eval.corruptions = () if cond.kind == "clean" else (cond.kind,)
    c.eval.severities = (cond.severity,) if cond.kind != "clean" else ()
    c.eval.baselines = None
    c.keep_checkpoints = 1
    return c


def pair_epochs(pair: str) -> float:
    """The pair's default budget: its diffusion config's ``num_epochs`` (the baseline's is equal)."""
    p = PAIRS[pair]
    epochs = {importlib.import_module(f"configs.{n}").get_config().num_epochs
              for n in (p.diffusion, p.baseline)}  # fmt: skip
    if len(epochs) != 1:
        raise ValueError(f"pair {pair}: {p.diffusion} and {p.baseline} train for different epochs "
                         f"{sorted(epochs)}; pass --epochs")  # fmt: skip
    return epochs.pop()


def cell_spec(cell: Cell, config) -> dict:
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


# ---------------------------------------------------------------------------------- running


ARCHIVED = ("study_spec.json", "eval_results.json", "study_run.json")
"""The files of a finished run that the archive keeps (a few kB each)."""


def default_archive(grid: Grid) -> pathlib.Path | None:
    """Where the committed copy of ``grid``'s finished runs lives (none for the smoke grid)."""
    return (
        None if grid.tag == "smoke" else ROOT / "benchmarks" / "results" / f"robustness_{grid.tag}"
    )


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


def run_cell(cell: Cell, config, workdir: pathlib.Path) -> dict:
    """Train (or resume) and evaluate one run; writes ``eval_results.json`` (the records of its
    test condition, as the main job writes them) and ``study_run.json`` (timings, machine).
    Returns the latter."""
    from didiff_jax import evaluate, train

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


Runner = Callable[[Cell, Any, pathlib.Path], dict]


def run_study(grid: Grid, out: pathlib.Path, *, runner: Runner = run_cell,
              archive: pathlib.Path | None = None, time_budget_s: float | None = None,
              log: Callable[[str], None] = print) -> dict[Cell, str]:  # fmt: skip
    """Run every cell of ``grid`` that has no ``eval_results.json`` yet, under ``out`` or in
    ``archive`` (checking the settings of those that have one, and of half-done ones), and copy
    each new run to ``archive``. Stops starting new runs once ``time_budget_s`` has passed.
    Returns each cell's status: 'done' (found), 'ran', or 'not started'."""
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


# ----------------------------------------------------------------------------- cost estimate

TRAIN_RATE = {"didirn18": 650.0, "resnet18": 760.0, "vit_ti16": 390.0, "add_vit_ti16": 360.0}
"""Training examples/s of each study network on the 2 idle cores of the development VM: DiDiRN-18
as the main job measured it; the others scaled by their CPU time per training example relative to
it (2.76, 2.35, 4.55 and 4.92 CPU-ms at batch 128, measured with ``time.process_time``)."""

FORWARD_PER_TRAIN = 3.4
"""Test-time network evaluations per training example's time. Fitted to the study's own runs: the
quick grid's DiDiRN-18 evaluations (4.3), the full grid's ADD-ViT runs (6.9) and its DiDiRN-18 runs
at 10,000 test images (3.4, 820 s of evaluation each); the lowest, so that evaluation estimates
err long."""

ADD_HEAD_FRACTION = 0.03
"""One ADD head evaluation relative to one ADD-ViT encoder pass (measured 0.022; rounded up)."""

COMPILE_S = 3.0
"""Seconds per compiled program (the train step, each sampler chain) on the idle 2-core machine.
Fitted, with ``FORWARD_PER_TRAIN``, to the measured run times. These small networks compile in a
few seconds."""


def network_evals(entry: dict, steps: int | None) -> float:
    """Network evaluations per test image of one sampler entry at ``steps`` (ADD: in encoder
    passes; the encoder runs once and the head once per step, twice with guidance)."""
    name = entry["name"]
    if name == "classifier":
        return 1.0
    if name == "cl":
        return steps * entry.get("num_chains", 10)
    if name == "onehot":
        guided = entry.get("guidance_scale", 1.0) != 1.0
        return 1.0 + steps * ADD_HEAD_FRACTION * (2 if guided else 1)
    return float(steps)


def estimate_seconds(config) -> float:
    """Rough wall seconds of one run on the 2 idle cores: training, evaluation, compilation."""
    rate = TRAIN_RATE.get(config.model.name, 650.0)
    train_s = config.num_steps * config.batch_size / rate
    examples = config.eval.max_examples or 10_000
    evals = sum(network_evals(e, s) for e in config.eval.samplers
                for s in (e.get("steps") or (None,)))  # fmt: skip
    programs = 1 + sum(len(e.get("steps") or (None,)) for e in config.eval.samplers)
    return train_s + examples * evals / (FORWARD_PER_TRAIN * rate) + programs * COMPILE_S


def machine_speed(grid: Grid, found: dict[Cell, dict], machine: str) -> tuple[float, int] | None:
    """How this machine compares with the estimate: the median, over the finished runs ``found``
    (``collect``) recorded on ``machine`` and trained in one go (a resumed run's ``train_s`` is
    partial), of measured wall seconds over ``estimate_seconds``; and how many runs that is. None
    if there are none. The estimate is fitted to one 2-core VM; another ran the same runs 1.9x
    slower."""
    ratios = [
        (run["meta"].get("train_s", 0.0) + run["meta"].get("eval_s", 0.0))
        / estimate_seconds(build_config(cell, grid))
        for cell, run in found.items()
        if run["meta"].get("machine") == machine and not run["meta"].get("resumed")
    ]
    return (float(np.median(ratios)), len(ratios)) if ratios else None


# ---------------------------------------------------------------------------------- results


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


def _stats(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)  # [n]
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "n": int(len(v)), "values": [float(x) for x in v]}  # fmt: skip


METRICS = ("top1", "top5", "nll", "ece")


def _condition_records(records: list[dict], cond: Condition) -> list[dict]:
    return [
        r for r in records if r["condition"] == cond.kind and int(r["severity"]) == cond.severity
    ]


def headline_steps(objective: str, grid: Grid) -> int | None:
    """The largest step count of the objective's headline sampler in ``grid`` (None: one-shot)."""
    if objective == "classifier":
        return None
    label = HEADLINE_SAMPLER[objective]
    steps = [s for e in SAMPLERS[(objective, grid.tag)] if _steps_label(e) == label
             for s in e["steps"]]  # fmt: skip
    return max(steps)


def summarize(grid: Grid, found: dict[Cell, dict]) -> dict:
    """Means and spreads over seeds of every (pair, condition, model, sampler, steps) and the paired
    headline gains; JSON-ready."""
    rows = []
    groups: dict[tuple, dict[int, dict]] = {}
    for cell, res in found.items():
        for r in _condition_records(res["records"], CONDITIONS[cell.condition]):
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
                objective = _pair_objective(pair, role)
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


def _pair_objective(pair: str, role: str) -> str:
    name = getattr(PAIRS[pair], role)
    return importlib.import_module(f"configs.{name}").get_config().objective.name


def _fmt(stats: dict | None, *, percent: bool, digits: int) -> str:
    if not stats:
        return "not run"
    scale = 100.0 if percent else 1.0
    text = f"{scale * stats['mean']:.{digits}f}"
    if stats["std"] is not None:
        text += f" ± {scale * stats['std']:.{digits}f}"
    return text


def _outcome(gain: dict) -> str:
    """'ahead' / 'behind' when every seed's paired difference has that sign, else 'mixed'."""
    v = np.asarray(gain["values"])
    if np.all(v > 0):
        return "ahead"
    if np.all(v < 0):
        return "behind"
    return "mixed" if len(v) > 1 else "tie"


def _ranks(a: Sequence[float]) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(len(a), dtype=np.float64)
    for v in np.unique(a):
        r[a == v] = r[a == v].mean()
    return r


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _spearman_p_greater(x: Sequence[float], y: Sequence[float], *, draws: int = 20_000) -> float:
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
    observed = _spearman(x, y)
    return float(np.mean(rho >= observed - 1e-12))


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
            rho, p = _spearman(difficulty, gains), _spearman_p_greater(difficulty, gains)
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
        steps_line = _steps_statement(pair, summary)
        if steps_line:
            lines.append(steps_line)
    return lines


def _steps_statement(pair: str, summary: dict) -> str:
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


# ------------------------------------------------------------------------------------ report


def _relabel(record: dict, condition: str) -> dict:
    """A record with ``condition`` / ``severity`` as the severity plot wants them: the clean run at
    severity 0 of every panel, corrupted runs under their corruption kind."""
    cond = CONDITIONS[condition]
    return {**record, "condition": cond.kind, "severity": cond.severity}


def _pooled_reliability(reliabilities: list[dict]) -> dict:
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
    from didiff_jax import plots

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
        for r in _condition_records(res["records"], CONDITIONS[cell.condition]):
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
            objective = _pair_objective(pair, role)
            label, steps = HEADLINE_SAMPLER[objective], headline_steps(objective, grid)
            rel = [r["reliability"] for cell, res in found.items()
                   if cell.pair == pair and cell.role == role and cell.condition == "clean"
                   for r in res["records"] if r["sampler"] == label and r["steps"] == steps]  # fmt: skip
            if rel:
                name = getattr(PAIRS[pair], role).removeprefix("fashion_mnist_")
                title = f"{name}, {label}" + (f", {steps} steps" if steps else "")
                made[f"reliability_{name}"] = plots.plot_reliability(
                    _pooled_reliability(rel), fig_dir / f"reliability_{name}.png", title=title
                )
    return {k: pathlib.Path(v) for k, v in made.items()}


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


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
        lines.append(f"Wall-clock of the runs: {_hours(train_s)} training, {_hours(eval_s)} "
                     f"evaluation (sum over runs; a resumed run counts its last session only); "
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


# -------------------------------------------------------------------------------------- main


def grid_from_args(args) -> Grid:
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


def report_grid(grid: Grid) -> Grid:
    """The grid a report covers: the whole named grid (full, quick, smoke) at ``grid``'s budget,
    joined with whatever ``grid`` selects beyond it. A run of a subset (``--seeds 1 --conditions
    ratio0.01``) adds its runs to the report; it does not shrink the report to them."""
    base = GRIDS[grid.tag]
    return dataclasses.replace(
        grid,
        pairs=tuple(p for p in PAIRS if p in base.pairs or p in grid.pairs),
        conditions=tuple(c for c in CONDITIONS if c in base.conditions or c in grid.conditions),
        seeds=tuple(sorted(set(base.seeds) | set(grid.seeds))),
    )


def report_command(args) -> str:
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
            est = estimate_seconds(config)
            total += 0.0 if state == "done" else est
            print(f"{cell.workdir(out)}: {state}, ~{est / 60:.1f} min")
        print(f"remaining, estimated for 2 idle cores: {_hours(total)}")
        machine = distributed.describe_machine()
        speed = machine_speed(grid, collect(grid, out, archive), machine)
        if speed is not None:
            ratio, n = speed
            print(f"on this machine ({machine}) {n} finished runs took {ratio:.2f}x the "
                  f"estimate (median): remaining at that rate {_hours(ratio * total)}")  # fmt: skip
        return
    if not args.report_only:
        t0 = time.time()
        budget = None if args.time_budget_min is None else 60 * args.time_budget_min
        status = run_study(grid, out, archive=archive, time_budget_s=budget)
        ran = sum(v == "ran" for v in status.values())
        print(f"{ran} runs in {_hours(time.time() - t0)}; "
              f"{sum(v == 'not started' for v in status.values())} left for another session")  # fmt: skip
    if archive is not None:  # runs made before the archive existed, or by an older driver
        copied = sum(archive_run(cell, out, archive) for cell in cells(grid))
        if copied:
            print(f"archived {copied} finished runs to {archive}")
    write_report(report_grid(grid), out, results, report_command(args), archive)
    print(f"report: {results} (summary: {out / 'summary.json'})")


if __name__ == "__main__":
    main()
