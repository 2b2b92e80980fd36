"""Entry point: ``python -m didiff_jax.main --config configs/<name>.py[:variant] --workdir DIR``.

Flags only; the work is in ``train.train_and_evaluate``, ``evaluate.evaluate`` and
``evaluate.predict``. Config fields are overridden with ``--config.a.b=value``; a key that the
config does not have fails with the closest existing one.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys

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


def _load_config(argv: list[str]):
    """The config named by ``--config=path[:arg]`` (or ``--config path``), without overrides."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv:
        spec = argv[argv.index("--config") + 1]
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_didiff_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with a did-you-mean for ``--config.*`` overrides the config does not have."""
    try:
        return FLAGS(argv)
    except (flags.UnrecognizedFlagError, AttributeError, KeyError) as e:
        if isinstance(e, flags.UnrecognizedFlagError) and not e.flagname.startswith("config."):
            raise
    overrides = [a.split("=")[0][2:] for a in argv if a.startswith("--config.")]
    keys = _flat_keys(_load_config(argv))
    for key in overrides:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f" Did you mean --{close[0]}?" if close else ""
            sys.exit(f"error: the config has no key {key[len('config.') :]!r}.{hint}")
    raise SystemExit("error: could not apply the --config.* overrides")


def main(argv: list[str]) -> None:
    images = list(FLAGS.images) + list(argv[1:])  # --images a.png b.jpg also works
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and grain are chatty at INFO
    from didiff_jax import distributed

    distributed.initialize(requested=FLAGS.distributed)  # before anything touches a device
    with distributed.exit_on_error():  # multi-process: one failing process ends them all
        run(FLAGS.mode, FLAGS.config, FLAGS.workdir, images)


def run(mode: str, config, workdir: str, images: list[str]) -> None:
    if mode == "train":
        from didiff_jax import train

        train.train_and_evaluate(config, workdir)
    elif images and mode != "predict":
        sys.exit(f"error: unexpected arguments {images} (only --mode predict takes images)")
    elif mode == "eval":
        from didiff_jax import evaluate

        evaluate.evaluate(config, workdir)
    else:
        from didiff_jax import evaluate

        if not images:
            sys.exit("error: --mode predict needs --images a.png b.jpg ...")
        results = evaluate.predict(config, workdir, images)
        if any("error" in r for r in results):
            sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
