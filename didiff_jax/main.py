"""Entry point: ``python -m didiff_jax.main --config configs/<name>.py[:variant] --workdir DIR``.

Flags, and the order of the work: ``train`` mode trains (``train.train``) and then evaluates
(:func:`train_and_evaluate`), ``eval`` evaluates a run (:func:`evaluate_run`: ``evaluate`` for
classification, ``captioning`` for captions), ``predict`` answers image files through
``didiff_jax.load(workdir)`` (:func:`predict`), so the command and the notebook API agree. Config fields are overridden with ``--config.a.b=value``; a key that the
config does not have fails with the closest existing one.

Usage errors end the command with one line on stderr, ``error: <what>: <what was expected>``, and
exit status 2, before any device work and before the workdir is created: bad flags (a value of the
wrong type, an unknown key, config file or variant), a config that cannot run
(``preflight.check_config``: step and batch counts, batch sizes that do not divide over the devices,
unknown names), data that is missing or malformed (``pipeline.check_data``: both splits, so a bad
test split fails before training), and for eval / predict a workdir that is not a run. The same
holds for a :class:`~didiff_jax.checks.InputError` raised later (e.g. a label out of range or a
workdir that another training run holds), a checkpoint that does not fit the config, and one that
is damaged with no intact one to fall back to. Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from typing import NoReturn

import jax
import ml_collections
import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from didiff_jax import (
    api,
    captioning,
    checkpoint,
    checks,
    distributed,
    evaluate,
    metrics,
    train,
    uncertainty_eval,
)
from didiff_jax.data import captions
from didiff_jax.preflight import preflight

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally ':variant' (e.g. ':smoke')."
)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, eval results, plots.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict"], "What to do.")
flags.DEFINE_list("images", [], "Image files to classify (--mode predict).")
flags.DEFINE_bool(
    "distributed",
    False,
    "Start jax.distributed with cluster auto-detection "
    "(TPU pod slice, SLURM, ...); see didiff_jax/distributed.py.",
)
flags.mark_flags_as_required(["config", "workdir"])


def _flat_keys(config, prefix: str = "config.") -> list[str]:
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if hasattr(v, "items"):
            keys.extend(_flat_keys(v, f"{prefix}{k}."))
    return keys


USAGE_ERROR = 2
"""Exit status of a usage error (bad flags, config or input), as argparse and absl use."""


def usage_error(message: str, *, multi_process: bool = False) -> NoReturn:
    """End the command with ``error: <message>`` on stderr and status 2 (no traceback).

    With several processes, exit at once without exit handlers: JAX's shutdown barrier would
    wait for processes that may not fail the same way (as ``distributed.exit_on_error``)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    if multi_process:
        sys.stdout.flush()
        os._exit(USAGE_ERROR)
    sys.exit(USAGE_ERROR)


def _config_spec(argv: list[str]) -> str | None:
    """The value of ``--config=path[:arg]`` (or ``--config path``), if given."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
        spec = argv[argv.index("--config") + 1]
    return spec


def _load_config(argv: list[str]):
    """The config named by ``--config``, without overrides (None if there is no ``--config``).

    A missing file, and a ``ValueError`` or ``KeyError`` of the config's ``get_config`` (how the
    configs reject an unknown variant or a bad variant value) are usage errors; any other
    exception in the config file is a bug in it and keeps its traceback."""
    spec = _config_spec(argv)
    if spec is None:
        return None
    try:
        return checkpoint.load_config_file(spec)
    except (ValueError, KeyError) as e:  # MissingInputError too
        usage_error(f"--config={spec}: {str(e).strip()}")


_FLAG_VALUE = re.compile(r"flag --(?P<flag>[^=]+)=(?P<value>.*?): (?P<why>.*)", re.DOTALL)


def _bad_value_message(error: flags.Error, config) -> str:
    """One line for a flag whose value absl rejected; for ``--config.key=value`` also the type
    that key takes (its value in the config), e.g. ``expected int (the config has 128)``."""
    text = " ".join(str(error).split())
    match = _FLAG_VALUE.match(text)
    if not match or not match["flag"].startswith("config.") or config is None:
        return text
    value = config
    for part in match["flag"].split(".")[1:]:
        value = value.get(part) if hasattr(value, "get") else None
    expected = f"; expected {type(value).__name__} (the config has {value!r})"
    return f"--{match['flag']}={match['value']}: {match['why']}" + (
        expected if value is not None else "")  # fmt: skip


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing where every usage error is one line (:func:`usage_error`): a missing or
    unknown flag, a value of the wrong type, a config file or variant that does not exist, and a
    ``--config.*`` key the config does not have (with the closest existing one)."""
    config = _load_config(argv)
    try:
        return FLAGS(argv)
    except (flags.UnrecognizedFlagError, AttributeError, KeyError) as e:
        if isinstance(e, flags.UnrecognizedFlagError) and not e.flagname.startswith("config."):
            usage_error(f"{' '.join(str(e).split())} (see --help)")
    except flags.Error as e:  # a value of the wrong type, an enum, a missing required flag
        usage_error(_bad_value_message(e, config))
    overrides = [a.split("=")[0][2:] for a in argv if a.startswith("--config.")]
    keys = _flat_keys(config) if config is not None else []
    for key in overrides:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f" Did you mean --{close[0]}?" if close else ""
            usage_error(f"the config has no key {key[len('config.') :]!r}.{hint}")
    usage_error("could not apply the --config.* overrides")


def main(argv: list[str]) -> None:
    images = list(FLAGS.images) + list(argv[1:])  # --images a.png b.jpg also works
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and grain are chatty at INFO
    distributed.initialize(requested=FLAGS.distributed)  # before anything touches a device
    with distributed.exit_on_error():  # multi-process: one failing process ends them all
        try:
            preflight(FLAGS.mode, FLAGS.config, FLAGS.workdir, images,
                      device_count=jax.device_count(), process_count=jax.process_count())  # fmt: skip
            run(FLAGS.mode, FLAGS.config, FLAGS.workdir, images)
        except (checks.InputError, checkpoint.CheckpointMismatch,
                checkpoint.CheckpointDamaged) as e:  # fmt: skip
            usage_error(str(e).strip(), multi_process=jax.process_count() > 1)


def run(mode: str, config: ml_collections.ConfigDict, workdir: str, images: list[str]) -> None:
    """The work of ``--mode`` on a checked config (see :func:`preflight`)."""
    if mode == "train":
        # Locked before the data is loaded: a second run on the workdir fails at once.
        with checkpoint.workdir_lock(workdir):
            train_and_evaluate(config, workdir)
    elif mode == "eval":
        evaluate_run(config, workdir)
    elif any("error" in r for r in predict(config, workdir, images)):
        sys.exit(1)


def evaluate_run(config: ml_collections.ConfigDict, workdir: str, run: dict | None = None
                 ) -> list[dict]:  # fmt: skip
    """The evaluation of the run's task: text metrics for captions (``captioning``), top-1,
    calibration and corruptions for classification (``evaluate``), then, with
    ``config.eval.uncertainty``, the uncertainty benchmark (``uncertainty_eval``); returns the
    records."""
    if config.data.name in captions.DATA_NAMES:
        return captioning.evaluate(config, workdir, run=run)
    records = evaluate.evaluate(config, workdir, run=run)
    if config.eval.get("uncertainty"):
        uncertainty_eval.evaluate(config, workdir)
    return records


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> None:
    """``train.train``, then :func:`evaluate_run` on the trained state (``eval.after_train``),
    holding the workdir lock through both (a second run could otherwise start in the evaluation
    and write the same files)."""
    with contextlib.ExitStack() as lock:
        trained = train.train(config, workdir, lock=lock)
        if config.eval.get("after_train", True) and not trained["stopped_early"]:
            evaluate_run(config, workdir, run=trained)


def predict(config: ml_collections.ConfigDict, workdir: str, paths: list[str]) -> list[dict]:
    """Answer each image file with the run's default sampler (the first configured one at its
    largest number of steps) through ``didiff_jax.load(workdir)``: the top-5 classes and the
    predictive entropy, or a caption for a caption run. Unreadable files are reported
    (``{"path", "error"}``) and the rest answered, as one batch with the default key, so this
    command and the notebook API give the same answers."""
    trained = api.load(workdir, config=config, use_ema=config.eval.get("use_ema", True))
    images, results = [], []
    for path in paths:
        try:
            images.append(api.read_image(path, trained.info.image_shape[2]))
            results.append({"path": path})
        except ValueError as e:
            print(f"error: {e}", flush=True)
            results.append({"path": path, "error": str(e)})
    readable = [r for r in results if "error" not in r]
    if not images:
        return results
    if trained.seq_len is not None:
        for r, caption in zip(readable, trained.caption(images), strict=True):
            r["caption"] = caption
            print(f"{r['path']}: {caption}", flush=True)
        return results
    for r, p in zip(readable, trained.predict(images), strict=True):  # p: [K]
        top = np.argsort(-p)[:5]
        entropy = float(metrics.predictive_entropy(jax.numpy.asarray(p[None]))[0])
        r.update(top5=[(trained.class_names[k], float(p[k])) for k in top], entropy=entropy)
        shown = ", ".join(f"{trained.class_names[k]} {p[k]:.3f}" for k in top)
        print(f"{r['path']}: {shown} | entropy {entropy:.3f} nats", flush=True)
    return results


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
