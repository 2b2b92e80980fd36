"""Entry point: ``python -m didiff_jax.main --config configs/<name>.py[:variant] --workdir DIR``.

Flags only; the work is in ``train.train_and_evaluate``, ``evaluate.evaluate`` and
``evaluate.predict``. Config fields are overridden with ``--config.a.b=value``; a key that the
config does not have fails with the closest existing one.

Usage errors end the command with one line on stderr, ``error: <what>: <what was expected>``, and
exit status 2, before any device work and before the workdir is created: bad flags (a value of the
wrong type, an unknown key, config file or variant), a config that cannot run
(``checks.check_config``: step and batch counts, batch sizes that do not divide over the devices,
unknown names), data that is missing or malformed (``pipeline.check_data``: both splits, so a bad
test split fails before training), and for eval / predict a workdir that is not a run. The same
holds for a :class:`~didiff_jax.checks.InputError` raised later (e.g. a label out of range or a
workdir that another training run holds), a checkpoint that does not fit the config, and one that
is damaged with no intact one to fall back to. Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import pathlib
import re
import sys
from typing import NoReturn

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

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
    path, _, arg = spec.partition(":")
    if not pathlib.Path(path).is_file():
        usage_error(f"--config={spec}: no such config file {path!r} (expected "
                    "configs/<name>.py[:variant])")  # fmt: skip
    module_spec = importlib.util.spec_from_file_location("_didiff_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        return module.get_config(arg or None)
    except (ValueError, KeyError) as e:
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


def preflight(mode: str, config, workdir: str, images: list[str]) -> None:
    """Every check that needs no computation, before ``run`` (see the module docstring):
    raises :class:`~didiff_jax.checks.InputError` naming the first problem."""
    import jax

    from didiff_jax import checks
    from didiff_jax.data import pipeline

    if images and mode != "predict":
        raise checks.InputError(f"unexpected arguments {images} (only --mode predict takes images)")
    if mode == "predict" and not images:
        raise checks.InputError("--mode predict needs --images a.png b.jpg ...")
    checks.check_config(config, mode=mode, device_count=jax.device_count(),
                        process_count=jax.process_count())  # fmt: skip
    if mode == "train":
        local = "://" not in workdir
        if local and os.path.exists(workdir) and not os.path.isdir(workdir):
            raise checks.InputError(f"--workdir={workdir} exists and is not a directory")
        evaluates = config.eval.get("after_train", True)
        pipeline.check_data(config.data, ("train", "test") if evaluates else ("train",))
        return
    from didiff_jax import api

    api.check_run_dir(workdir)
    if mode == "eval":
        pipeline.check_data(config.data, ("test",))


def main(argv: list[str]) -> None:
    images = list(FLAGS.images) + list(argv[1:])  # --images a.png b.jpg also works
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and grain are chatty at INFO
    from didiff_jax import distributed

    distributed.initialize(requested=FLAGS.distributed)  # before anything touches a device
    import jax

    from didiff_jax import checkpoint, checks

    with distributed.exit_on_error():  # multi-process: one failing process ends them all
        try:
            preflight(FLAGS.mode, FLAGS.config, FLAGS.workdir, images)
            run(FLAGS.mode, FLAGS.config, FLAGS.workdir, images)
        except (checks.InputError, checkpoint.CheckpointMismatch,
                checkpoint.CheckpointDamaged) as e:  # fmt: skip
            usage_error(str(e).strip(), multi_process=jax.process_count() > 1)


def run(mode: str, config, workdir: str, images: list[str]) -> None:
    if mode == "train":
        from didiff_jax import checkpoint, train

        # Locked before the data is loaded: a second run on the workdir fails at once.
        with checkpoint.workdir_lock(workdir):
            train.train_and_evaluate(config, workdir)
    elif images and mode != "predict":
        usage_error(f"unexpected arguments {images} (only --mode predict takes images)")
    elif mode == "eval":
        from didiff_jax import evaluate

        evaluate.evaluate(config, workdir)
    else:
        from didiff_jax import evaluate

        if not images:
            usage_error("--mode predict needs --images a.png b.jpg ...")
        results = evaluate.predict(config, workdir, images)
        if any("error" in r for r in results):
            sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
