"""The estimated wall time of a study run, and how a machine compares with the estimate.

``--plan`` prints it per run so that a session can choose what fits its time: training at the
network's measured rate, evaluation as network evaluations per test image, and compilation. The
constants are fitted to one idle 2-core VM; ``machine_speed`` scales them to the machine at hand
from its own finished runs.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from didiff_jax.study.grid import Cell, Grid, build_config

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


def estimate_seconds(config: ml_collections.ConfigDict) -> float:
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
    (``runner.collect``) recorded on ``machine`` and trained in one go (a resumed run's ``train_s``
    is partial), of measured wall seconds over ``estimate_seconds``; and how many runs that is.
    None if there are none. The estimate is fitted to one 2-core VM; another ran the same runs 1.9x
    slower."""
    ratios = [
        (run["meta"].get("train_s", 0.0) + run["meta"].get("eval_s", 0.0))
        / estimate_seconds(build_config(cell, grid))
        for cell, run in found.items()
        if run["meta"].get("machine") == machine and not run["meta"].get("resumed")
    ]
    return (float(np.median(ratios)), len(ratios)) if ratios else None
