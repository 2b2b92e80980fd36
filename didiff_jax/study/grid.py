"""What the robustness study runs: its conditions, pairs, sampler entries, grids and cells, and the
config of each cell.

A cell is one model (the diffusion model or the baseline of a pair) trained and tested under one
condition with one seed. Both models of a pair get the same budget (optimizer steps), data
pipeline and test condition; only the objective, the head and the samplers differ. The configs are
the repository's ``configs/`` modules, with the condition as a config variant.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pathlib
from typing import Any

import ml_collections

from didiff_jax.data import corruptions

FASHION_MNIST_TRAIN = 60_000
"""Training images of Fashion-MNIST: ``--epochs`` counts passes over all of them."""

IMAGE_SIZE = 28


# ------------------------------------------------------------------------------ conditions


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


def condition_records(records: list[dict], cond: Condition) -> list[dict]:
    """The evaluation records of ``cond``'s test condition among a run's ``records``."""
    return [
        r for r in records if r["condition"] == cond.kind and int(r["severity"]) == cond.severity
    ]


# ------------------------------------------------------------------------- pairs, samplers


@dataclasses.dataclass(frozen=True)
class Pair:
    """Two models with the same body, compared: the config modules (under ``configs/``) of the
    diffusion model and of its baseline, and the pair's title in the report."""

    diffusion: str
    baseline: str
    title: str
    variant: str = ""
    """The configs' variant that fixes the study's recipe (the archived runs were trained with
    it; the configs' defaults may move on)."""
    diffusion_overrides: tuple[tuple[str, Any], ...] = ()
    """(dotted key, value) set on the diffusion model's config after the variant."""


PAIRS: dict[str, Pair] = {
    "didirn-resnet": Pair(
        "fashion_mnist_didirn",
        "fashion_mnist_resnet",
        "DiDiRN-18 vs ResNet-18 (width 16, reference stem)",
        # The official layout and augmentation, 4 epochs, and the log-score clamp of 20 on the
        # hard loss with which the 48 archived runs were trained.
        variant="reference",
        diffusion_overrides=(("objective.log_score_clip", 20.0),),
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
"""Sampler entries (``config.eval.samplers``) of the diffusion models per objective and grid. The
first entry of each list is the objective's headline sampler (``HEADLINE_SAMPLER``) and the only
one with that label."""

HEADLINE_SAMPLER = {"didicm": "cp-euler", "add": "onehot-argmax", "classifier": "classifier"}
"""The sampler each objective is compared with, fixed in advance (at its largest step count), by
the label the evaluation gives its records."""


def headline_steps(objective: str, grid: Grid) -> int | None:
    """The largest step count of the objective's headline sampler in ``grid`` (None: one-shot)."""
    if objective == "classifier":
        return None
    return max(SAMPLERS[(objective, grid.tag)][0]["steps"])


# ----------------------------------------------------------------------------- grids, cells


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


def load_config(name: str, variant: str | None = None) -> ml_collections.ConfigDict:
    """The config of ``configs/<name>.py`` with ``variant`` (its comma-separated variants).

    ``configs`` is the repository's package, not part of the installed library, so it is imported
    by name: the caller has the repository root on ``sys.path`` (the drivers and the tests do)."""
    return importlib.import_module(f"configs.{name}").get_config(variant)


def build_config(cell: Cell, grid: Grid) -> ml_collections.ConfigDict:
    """The config of ``cell``: the pair's config file with the condition's variant (and ``smoke``
    for the smoke grid), the seed, the budget, the study's samplers and its one test condition."""
    cond = CONDITIONS[cell.condition]
    pair = PAIRS[cell.pair]
    variants = [pair.variant, cond.variant, "smoke" if grid.tag == "smoke" else ""]
    c = load_config(cell.config_name, ",".join(v for v in variants if v) or None)
    if cell.role == "diffusion":
        c.update_from_flattened_dict(dict(pair.diffusion_overrides))
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
    epochs = {load_config(n, p.variant or None).num_epochs for n in (p.diffusion, p.baseline)}
    if len(epochs) != 1:
        raise ValueError(f"pair {pair}: {p.diffusion} and {p.baseline} train for different epochs "
                         f"{sorted(epochs)}; pass --epochs")  # fmt: skip
    return epochs.pop()


def pair_objective(pair: str, role: str) -> str:
    """The objective (``config.objective.name``) of the ``role`` model of ``pair``."""
    return load_config(getattr(PAIRS[pair], role), PAIRS[pair].variant or None).objective.name
