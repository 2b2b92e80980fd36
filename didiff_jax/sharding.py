"""Device mesh and sharding rules.

The mesh has two axes, ``data`` and ``fsdp`` (one of them may be -1: all remaining devices). The
batch is split over both; parameters and optimizer moments follow ``(regex, PartitionSpec)`` rules
from the config, matched against the '/'-joined path of each leaf (first match wins, default
replicated). A moment of the optimizer state has the parameter's path as a suffix, so one rule
covers both. A rule whose sharded dimension does not divide the axis size falls back to replicated
for that leaf (logged), so one rule set serves every model size.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all); one size may be -1."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one of data / fsdp may be -1")
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not cover the {n} devices")
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def path_str(path) -> str:
    """A pytree key path as 'a/b/0/c' (dict keys, attribute names and indices alike)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _spec_fits(shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh) -> bool:
    if len(spec) > len(shape):
        return False
    for dim, axes in zip(shape, spec, strict=False):
        if axes is None:
            continue
        size = int(np.prod([mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))]))
        if dim % size:
            return False
    return True


def state_shardings(tree, mesh: Mesh, rules: Sequence[tuple[str, PartitionSpec]] = ()):
    """A tree of ``NamedSharding`` for ``tree`` (arrays or ShapeDtypeStructs) from the rules."""
    compiled = [(re.compile(pattern), spec) for pattern, spec in rules]

    def one(path, leaf):
        name = path_str(path)
        shape = tuple(np.shape(leaf))
        for pattern, spec in compiled:
            if pattern.search(name):
                if _spec_fits(shape, spec, mesh):
                    return NamedSharding(mesh, spec)
                logging.info("sharding rule %s does not fit %s %s: replicated", spec, name, shape)
                break
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, tree)


def parse_rules(rules) -> list[tuple[str, PartitionSpec]]:
    """Config rules ``[(regex, (axis_or_None, ...)), ...]`` -> ``[(regex, PartitionSpec)]``."""
    return [(pattern, PartitionSpec(*spec)) for pattern, spec in (rules or ())]
