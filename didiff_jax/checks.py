"""Checks of what a user gives (config values, labels, files), made before anything is computed.

Bad input raises :class:`InputError` (or :class:`MissingInputError` for a path that is not there)
with a one-line message that names the input and says what was expected. ``python -m
didiff_jax.main`` prints such an error as ``error: <message>`` without a traceback and exits with
status 2; any other exception is treated as a bug and keeps its traceback. Both classes derive from
the built-in exceptions callers already catch (``ValueError``; ``FileNotFoundError`` too for
missing paths).

This module imports nothing heavy (no JAX), so the data modules and the entry point can use it
before a device is touched.
"""

from __future__ import annotations

import numpy as np


class InputError(ValueError):
    """Bad user input: a config value, a data file, a label, an image. The message is one line
    naming the input and what was expected."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or directory the user named (or the run needs) does not exist."""


# ------------------------------------------------------------------------------------ labels


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Raise :class:`InputError` unless every label lies in ``[0, num_classes)``.

    ``where`` names the labels' origin (a file, a directory) for the message, which gives the
    first bad value, its index and how many labels are out of range: a label outside the classes
    would train a model on a class it does not have and report impossible accuracies.
    """
    labels = np.asarray(labels)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{where}: label {int(labels[i])} at index {i} is outside the valid range "
            f"[0, {num_classes}) ({bad.size} of {labels.size} labels out of range)"
        )
