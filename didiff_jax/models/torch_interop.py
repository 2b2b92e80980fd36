"""PyTorch state dicts <-> didiff_jax ResNet / DiDiRN parameters.

Key names follow the official DiDiCM release (timm-based) for DiDiRN and timm/torchvision for
ResNet. The two differ only in the module names below; the leaves map as

    conv ``weight`` [O, I, H, W]  <->  ``kernel`` [H, W, I, O]
    linear ``weight`` [out, in]   <->  ``kernel`` [in, out]
    BatchNorm ``weight``/``bias``/``running_mean``/``running_var``  <->  ``scale``/``bias``/``mean``/``var``
    GroupNorm ``weight``/``bias``  <->  ``scale``/``bias``
    label embedding ``weight`` [K, D]  <->  ``label_embed`` [K, D]

State dicts are plain ``{name: numpy array}``; no torch import is needed here.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from didiff_jax.models.resnet import DiDiRN, ResNet

# nnx module name -> torch module name, per family.
_MODULES = {
    "resnet": {"downsample": "downsample", "conv": "0", "bn": "1"},
    "didirn": {
        "downsample": "skip_connection",
        "conv": "0",
        "bn": "1",
        "cond": None,  # dropped: its children carry the torch names
        "emb_proj": "emb_layers.1",
        "norm": "out_layers.0",
        "sigma_embed": "ff_emb",
        "fc1": "mlp.0",
        "fc2": "mlp.2",
    },
}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var"}  # fmt: skip


def _family(model: nnx.Module) -> str:
    if isinstance(model, DiDiRN):
        return "didirn"
    if isinstance(model, ResNet):
        return "resnet"
    raise TypeError(f"torch weights map onto ResNet / DiDiRN models, not {type(model).__name__}")


def torch_name(path: tuple, family: str) -> str:
    """The PyTorch key of one nnx state path, e.g. ``('layer1', 0, 'cond', 'emb_proj', 'kernel')``
    -> ``'layer1.0.emb_layers.1.weight'``."""
    if path == ("label_embed",):
        return "label_embedder.weight"
    *modules, leaf = path
    names = []
    for m in modules:
        if m == "stem":
            continue  # conv1 / bn1 sit at the top level in torch
        mapped = _MODULES[family].get(m, m) if isinstance(m, str) else str(m)
        if mapped is not None:
            names.append(mapped)
    return ".".join(names + [_LEAVES[leaf]])


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:
        return (shape[1], shape[0])
    return tuple(shape)


def _to_torch(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (3, 2, 0, 1))  # HWIO -> OIHW
    if leaf == "kernel" and value.ndim == 2:
        return value.T  # [in, out] -> [out, in]
    return value


def _from_torch(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def _flat_state(model: nnx.Module) -> dict[tuple, nnx.Variable]:
    """Parameters and batch statistics of the model, by path (the RNG state is not a weight)."""
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))  # the Variables themselves
    return dict(nnx.to_flat_state(state))


def export_torch_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters and BatchNorm statistics as a PyTorch-named state dict (float32)."""
    family = _family(model)
    out = {}
    for path, var in _flat_state(model).items():
        leaf = path[-1]
        out[torch_name(path, family)] = _to_torch(np.asarray(var[...], np.float32), leaf)
    return out


class StateDictMismatch(ValueError):
    """A state dict that does not fit the model: lists missing, unexpected and mis-shaped keys."""


def check_torch_weights(
    model: nnx.Module, state_dict: Mapping[str, np.ndarray], *, strict: bool = True
) -> dict[str, tuple]:
    """Check a PyTorch-named state dict against ``model`` (which may be abstract, from
    ``nnx.eval_shape``); returns ``{torch key: nnx path}`` of the keys to load.

    Raises ``StateDictMismatch`` listing missing, unexpected (both only with ``strict``) and
    mis-shaped keys. ``num_batches_tracked`` entries are ignored.
    """
    family = _family(model)
    flat = _flat_state(model)
    wanted = {torch_name(path, family): path for path in flat}
    given = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    missing = sorted(set(wanted) - given)
    unexpected = sorted(given - set(wanted))
    mismatched = []
    for key in sorted(set(wanted) & given):
        path = wanted[key]
        want_shape = _torch_shape(tuple(flat[path].get_value().shape), path[-1])
        if tuple(np.shape(state_dict[key])) != want_shape:
            mismatched.append(
                f"{key}: checkpoint {tuple(np.shape(state_dict[key]))}, model {want_shape}"
            )
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"state dict does not fit {type(model).__name__}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatch", mismatched)):  # fmt: skip
            if items:
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]))
                if len(items) > 20:
                    lines[-1] += f", ... ({len(items) - 20} more)"
        raise StateDictMismatch("\n".join(lines))
    return {k: p for k, p in wanted.items() if k in given}


def load_torch_weights(
    model: nnx.Module, state_dict: Mapping[str, np.ndarray], *, strict: bool = True
) -> nnx.Module:
    """Fill ``model`` (in place) from a PyTorch-named state dict of numpy arrays; returns it.

    Every key is checked (``check_torch_weights``) before anything is written.
    """
    flat = _flat_state(model)
    for key, path in check_torch_weights(model, state_dict, strict=strict).items():
        var = flat[path]
        var[...] = jnp.asarray(
            _from_torch(np.asarray(state_dict[key]), path[-1]), dtype=var[...].dtype
        )
    return model
