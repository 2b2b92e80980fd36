"""Reading PyTorch ``.pth`` / ``.pth.tar`` checkpoints without running code from them.

A ``.pth`` file is a pickle: loaded with ``torch.load(..., weights_only=False)``, a crafted file runs
any code it likes on this machine. Here files are loaded with ``weights_only=True`` (PyTorch's
restricted unpickler: tensors, containers and plain Python values), allowing in addition only the
non-tensor types that timm-style training checkpoints carry (:data:`SAFE_GLOBALS`). A file that
needs anything else is refused with a message naming the file and the type; full unpickling is
only done when asked for explicitly (``python -m didiff_jax.convert --unsafe-full-unpickle``).

What a checkpoint written by the official DiDiCM ``train.py`` holds (timm's ``CheckpointSaver``):
``epoch``, ``arch``, ``version``, ``metric`` (Python scalars and strings), ``state_dict``,
``state_dict_ema`` and ``optimizer`` (tensors in dicts and lists), ``amp_scaler`` (a dict of
numbers), ``saver`` (lists and tuples of names and numbers) and ``args``, the training script's
``argparse.Namespace``: the one type outside PyTorch's default allow-list.

Only NumPy and, when a ``.pth`` is read, PyTorch are imported (no JAX), so this module runs in an
environment that has PyTorch alone.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from typing import Any

import numpy as np

SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
"""Types allowed on top of PyTorch's ``weights_only`` defaults (found in timm checkpoints)."""


class UnsafeCheckpointError(ValueError):
    """The checkpoint needs types that the restricted unpickler does not allow."""


def load(path: str | os.PathLike, *, unsafe_full_unpickle: bool = False) -> Any:
    """The object stored in the torch checkpoint ``path``, tensors on the CPU.

    Restricted unpickling (``weights_only=True`` plus :data:`SAFE_GLOBALS`) unless
    ``unsafe_full_unpickle``: that one runs whatever code the file contains, so only use it for
    files from a source you trust. Raises :class:`UnsafeCheckpointError` naming the file and the
    refused type, and ``SystemExit`` with install instructions when PyTorch is missing.
    """
    try:
        import torch
    except ImportError:
        raise SystemExit(
            f"reading {os.fspath(path)} needs PyTorch: pip install 'didiff_jax[torch]' (or "
            "convert it to .npz with {k: v.numpy() for k, v in state_dict.items()} where torch "
            "is available)"
        ) from None
    if unsafe_full_unpickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(str(e))
        raise UnsafeCheckpointError(
            f"{os.fspath(path)}: refused to unpickle {refused or 'a type'} (only tensors, plain "
            "Python values and argparse.Namespace are loaded, so that a checkpoint cannot run "
            "code); if you trust the file's source, pass --unsafe-full-unpickle"
        ) from None


def _refused_global(message: str) -> str | None:
    """The type named in PyTorch's restricted-unpickler error ("Unsupported global: GLOBAL
    builtins.set was not an allowed global", "unsupported GLOBAL posix.system whose module posix
    is blocked"), if any."""
    match = re.search(r"GLOBAL (\S+)", message)
    return match[1] if match else None


def state_dict(obj: Any, path: str, *, ema: bool = False) -> dict[str, np.ndarray]:
    """``{name: array}`` of a loaded checkpoint ``obj``: timm's ``state_dict`` (or
    ``state_dict_ema`` with ``ema``), a ``model`` entry, or the state dict itself; a ``module.``
    prefix (DataParallel) is stripped and non-tensor entries are dropped."""
    key = "state_dict_ema" if ema else "state_dict"
    if isinstance(obj, dict) and key in obj:
        obj = obj[key]
    elif ema:
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise SystemExit(f"{path} has no 'state_dict_ema' (keys: {keys})")
    elif isinstance(obj, dict) and "model" in obj and hasattr(obj["model"], "items"):
        obj = obj["model"]
    if not hasattr(obj, "items"):
        raise SystemExit(
            f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}"
        )
    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            out[k.removeprefix("module.")] = v.detach().cpu().numpy()
    return out


def read(path: str, *, ema: bool = False, unsafe_full_unpickle: bool = False
         ) -> dict[str, np.ndarray]:  # fmt: skip
    """``{name: array}`` of the torch checkpoint ``path`` (:func:`load`, then :func:`state_dict`)."""
    return state_dict(load(path, unsafe_full_unpickle=unsafe_full_unpickle), path, ema=ema)
