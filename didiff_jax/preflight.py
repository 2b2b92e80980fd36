"""Everything checked before a run spends compute or writes a file.

* :func:`check_config`: a config that cannot run as asked (step and batch counts, batch sizes that
  do not divide over the devices, the mesh, unknown model / objective / corruption / sampler
  names);
* :func:`preflight`: what ``python -m didiff_jax.main`` checks before it starts: the config, the
  data of every split the run will read (``pipeline.check_data``), and for ``eval`` / ``predict`` a
  workdir that is a run.

Each raises :class:`~didiff_jax.checks.InputError` with one line naming the input and what was
expected (the entry point prints it without a traceback).
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

from didiff_jax import checkpoint
from didiff_jax.checks import InputError
from didiff_jax.data import corruptions_c, pipeline
from didiff_jax.data.corruptions import CORRUPTIONS, NUM_SEVERITIES
from didiff_jax.inference import SAMPLERS
from didiff_jax.models import BUILDERS


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_int(config, key: str, *, minimum: int = 1) -> int:
    value = config.get(key)
    if not _is_int(value) or value < minimum:
        raise InputError(f"config.{key}={value!r}: expected an integer >= {minimum}")
    return int(value)


def _multiple_hint(value: int, n: int) -> str:
    lower, upper = value // n * n, (value // n + 1) * n
    return f"use a multiple of {n}, e.g. {upper}" + (f" or {lower}" if lower else "")


def _check_divides(key: str, value: int, devices: int, processes: int) -> None:
    """The global batch is split evenly over every device (and so over every process)."""
    if value % devices:
        raise InputError(
            f"config.{key}={value} does not divide over the {devices} devices (each takes an "
            f"equal share of the global batch): {_multiple_hint(value, devices)}"
        )
    if value % processes:
        raise InputError(
            f"config.{key}={value} does not divide over the {processes} processes: "
            f"{_multiple_hint(value, processes)}"
        )


def _check_mesh(config, devices: int) -> None:
    mesh = config.get("mesh") or {}
    data, fsdp = mesh.get("data", -1), mesh.get("fsdp", 1)
    shown = f"config.mesh=(data={data}, fsdp={fsdp})"
    for value in (data, fsdp):
        if not _is_int(value) or (value < 1 and value != -1):
            raise InputError(f"{shown}: each size must be a positive integer or -1 (the rest)")
    if data == -1 and fsdp == -1:
        raise InputError(f"{shown}: at most one of data / fsdp may be -1")
    known = fsdp if data == -1 else data
    product = data * fsdp
    if (-1 in (data, fsdp) and devices % known) or (-1 not in (data, fsdp) and product != devices):
        raise InputError(f"{shown} does not cover the {devices} devices (data x fsdp must equal "
                         "the device count; -1 takes the rest)")  # fmt: skip


def _check_names(config, evaluates: bool) -> None:
    """Model, objective, corruption and sampler names and severities: a typo in one of them would
    otherwise fail after the workdir is written (the objective, the first batch) or after the
    whole training (the evaluation's samplers and corruptions)."""
    model = config.model.get("name")
    if model not in BUILDERS:
        raise InputError(f"config.model.name={model!r}: expected one of {sorted(BUILDERS)}")
    objective = config.objective.get("name")
    if objective not in SAMPLERS:
        raise InputError(f"config.objective.name={objective!r}: expected one of {sorted(SAMPLERS)}")
    severities = range(NUM_SEVERITIES + 1)
    corruption = config.data.get("corruption") or {}
    kind, severity = corruption.get("kind", ""), corruption.get("severity", 0)
    if kind and kind not in CORRUPTIONS:
        raise InputError(
            f"config.data.corruption.kind={kind!r}: expected '' or one of {CORRUPTIONS}"
        )
    if not _is_int(severity) or severity not in severities:
        raise InputError(f"config.data.corruption.severity={severity!r}: expected an integer in "
                         f"0..{NUM_SEVERITIES}")  # fmt: skip
    if not evaluates:
        return
    for kind in config.eval.get("corruptions") or ():
        if kind not in CORRUPTIONS:
            raise InputError(
                f"config.eval.corruptions has {kind!r}: expected names in {CORRUPTIONS}"
            )
    if config.eval.get("corruptions"):
        for severity in config.eval.get("severities") or ():
            if not _is_int(severity) or not 1 <= severity <= NUM_SEVERITIES:
                raise InputError(f"config.eval.severities has {severity!r}: expected integers in "
                                 f"1..{NUM_SEVERITIES}")  # fmt: skip
    _check_uncertainty(config)
    for i, entry in enumerate(config.eval.get("samplers") or ()):
        name = entry.get("name") if hasattr(entry, "get") else entry
        if name not in SAMPLERS[objective]:
            raise InputError(f"config.eval.samplers[{i}].name={name!r} does not fit objective "
                             f"{objective!r}: expected one of {SAMPLERS[objective]}")  # fmt: skip


def _check_data_subset(config) -> None:
    """``data.holdout`` (training examples kept apart) and ``data.classes`` (a class subset)."""
    holdout = config.data.get("holdout", 0)
    if not _is_int(holdout) or holdout < 0:
        raise InputError(f"config.data.holdout={holdout!r}: expected an integer >= 0")
    classes = tuple(config.data.get("classes") or ())
    if classes and (config.data.get("name") not in ("fashion_mnist", "fashion_mnist_tfds")
                    or len(set(classes)) != len(classes) or len(classes) < 2
                    or not all(_is_int(k) and 0 <= k < 10 for k in classes)):  # fmt: skip
        raise InputError(f"config.data.classes={classes!r}: expected () or at least 2 distinct "
                         "Fashion-MNIST classes in 0..9")  # fmt: skip


def _check_uncertainty(config) -> None:
    """``eval.uncertainty``: the uncertainty benchmark's names and counts."""
    u = config.eval.get("uncertainty")
    if not u:
        return
    for key, known in (("corruptions", corruptions_c.CORRUPTIONS_C), ("ood", corruptions_c.OOD_SETS),
                       ("severities", corruptions_c.SEVERITIES)):  # fmt: skip
        for value in u.get(key) or ():
            if value not in known:
                raise InputError(f"config.eval.uncertainty.{key} has {value!r}: expected values "
                                 f"in {known}")  # fmt: skip
    for key in ("max_examples", "num_samples"):
        value = u.get(key, 1)
        if not _is_int(value) or value < 1:
            raise InputError(f"config.eval.uncertainty.{key}={value!r}: expected an integer >= 1")


def check_config(config, *, mode: str, device_count: int, process_count: int = 1) -> None:
    """Raise :class:`InputError` for a config that cannot run as asked (``mode``: ``"train"``,
    ``"eval"`` or ``"predict"``), before anything is computed or written.

    Training: ``batch_size`` an integer >= 1 that divides over the devices and processes;
    ``num_steps`` an integer >= 0, where 0 means "train for ``num_epochs``" (then ``num_epochs``
    must be a finite number > 0; it may not be negative in any case); ``log_every_steps``,
    ``checkpoint_every_steps``, ``keep_checkpoints`` >= 1; ``data.train_ratio`` in (0, 1]; the mesh
    covers the devices; known model, objective and corruption names. Evaluation (``mode="eval"``, or training with ``eval.after_train``):
    ``eval.batch_size`` >= 1 dividing over the devices, ``eval.max_examples`` >= 0, known
    corruptions with severities in 1..5, and samplers that fit the objective with ``steps`` >= 1. Prediction only needs ``eval.batch_size`` >= 1 (it pads a short
    chunk to the devices itself).
    """
    if mode not in ("train", "eval", "predict"):
        raise ValueError(f"mode must be 'train', 'eval' or 'predict', got {mode!r}")
    evaluates = mode == "eval" or (mode == "train" and config.eval.get("after_train", True))
    if evaluates and config.eval.get("uncertainty") and process_count > 1:
        raise InputError("config.eval.uncertainty: the uncertainty evaluation runs in one process; "
                         "train with eval.after_train=False, then --mode eval on one process")  # fmt: skip
    if mode in ("train", "eval"):
        _check_mesh(config, device_count)
        _check_names(config, evaluates)
        _check_data_subset(config)
    if mode == "train":
        batch = _positive_int(config, "batch_size")
        steps = config.get("num_steps", 0)
        if not _is_int(steps) or steps < 0:
            raise InputError(
                f"config.num_steps={steps!r}: expected an integer >= 0 (0 = train for "
                "config.num_epochs)"
            )
        epochs = config.get("num_epochs")
        if not _is_real(epochs) or not math.isfinite(epochs) or epochs < 0 or (
                steps == 0 and epochs == 0):  # fmt: skip
            raise InputError(
                f"config.num_epochs={epochs!r}: expected a number > 0 (it sets the length of "
                f"training when config.num_steps=0; here num_steps={steps})"
            )
        for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
            if key in config:
                _positive_int(config, key)
        ratio = config.data.get("train_ratio", 1.0)
        if not _is_real(ratio) or not 0.0 < ratio <= 1.0:
            raise InputError(f"config.data.train_ratio={ratio!r}: expected a fraction in (0, 1]")
        _check_divides("batch_size", batch, device_count, process_count)
    eval_batch = config.eval.get("batch_size", config.get("batch_size"))
    if not _is_int(eval_batch) or eval_batch < 1:
        raise InputError(f"config.eval.batch_size={eval_batch!r}: expected an integer >= 1")
    if evaluates:
        _check_divides("eval.batch_size", int(eval_batch), device_count, process_count)
        max_examples = config.eval.get("max_examples", 0) or 0
        if not _is_int(max_examples) or max_examples < 0:
            raise InputError(f"config.eval.max_examples={max_examples!r}: expected an integer "
                             ">= 0 (0 = the whole test split)")  # fmt: skip
        for i, entry in enumerate(config.eval.get("samplers") or ()):
            steps = entry.get("steps", (1,)) if hasattr(entry, "get") else (1,)
            if not steps or any(not _is_int(s) or s < 1 for s in steps):
                raise InputError(f"config.eval.samplers[{i}].steps={tuple(steps)!r}: expected "
                                 "integers >= 1")  # fmt: skip


def preflight(mode: str, config, workdir: str, images: list[str], *, device_count: int,
              process_count: int = 1) -> None:  # fmt: skip
    """Every check of ``python -m didiff_jax.main --mode <mode>`` that needs no computation:
    the arguments, :func:`check_config`, the data of the splits the run reads (both for a
    training run that evaluates, so a bad test split fails before training) and, for ``eval`` /
    ``predict``, a workdir that is a run. Raises ``InputError`` naming the first problem."""
    if images and mode != "predict":
        raise InputError(f"unexpected arguments {images} (only --mode predict takes images)")
    if mode == "predict" and not images:
        raise InputError("--mode predict needs --images a.png b.jpg ...")
    check_config(config, mode=mode, device_count=device_count, process_count=process_count)
    if mode == "train":
        local = "://" not in workdir
        if local and os.path.exists(workdir) and not os.path.isdir(workdir):
            raise InputError(f"--workdir={workdir} exists and is not a directory")
        evaluates = config.eval.get("after_train", True)
        pipeline.check_data(config.data, ("train", "test") if evaluates else ("train",))
        return
    checkpoint.check_run_dir(workdir)
    if mode == "eval":
        pipeline.check_data(config.data, ("test",))
