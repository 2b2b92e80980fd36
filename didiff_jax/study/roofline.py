"""XLA's counts of a compiled computation and the roofline bound they give on a GPU.

The speed benchmark (``benchmarks/throughput.py --project``) compiles a step on this machine and
asks what it could do at best on a GPU it does not have: the FLOPs and bytes that XLA's cost
analysis counts, divided by the GPU's peak arithmetic rate and memory bandwidth. That is a BOUND,
a projection, never a measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

GPUS = {
    "h100": {
        "name": "NVIDIA H100 SXM (80 GB HBM3)",
        "peak_flops": 989e12,  # bf16 dense tensor-core peak, FLOP/s
        "bandwidth": 3.35e12,  # HBM3, bytes/s
        "memory": 80e9,  # bytes
    },
    "h200": {
        "name": "NVIDIA H200 SXM (141 GB HBM3e)",
        "peak_flops": 989e12,  # the same Hopper tensor cores as the H100 SXM
        "bandwidth": 4.8e12,  # HBM3e, bytes/s
        "memory": 141e9,  # bytes
    },
}
"""The GPUs a projection can be made for (NVIDIA's data-sheet figures), by ``--gpu`` name."""


def xla_cost(compiled) -> dict[str, float]:
    """``{"flops", "bytes"}`` of a compiled computation from XLA's cost analysis.

    XLA counts a ``while`` loop's body once, whatever its trip count (a ``lax.scan`` of S steps is
    counted as one step); use ``chain_cost`` for a sampler chain.
    """
    ca = compiled.cost_analysis()
    if isinstance(ca, list | tuple):  # older jax: one dict per computation
        ca = ca[0]
    return {"flops": float(ca.get("flops", 0.0)), "bytes": float(ca.get("bytes accessed", 0.0))}


def chain_cost(lower_chain: Callable[[int], Any], num_steps: int) -> dict[str, float]:
    """The cost of an ``num_steps``-step chain as ``num_steps`` x the cost of the 1-step chain.

    ``lower_chain(S)`` returns the lowered (not compiled) S-step chain. XLA's cost analysis counts a
    scan's body once, so the S-step chain itself would report about one step's work.
    """
    one = xla_cost(lower_chain(1).compile())
    return {k: v * num_steps for k, v in one.items()}


def footprint_bytes(compiled) -> int:
    """XLA's compiled memory footprint: arguments + outputs + temporaries - donated aliases."""
    m = compiled.memory_analysis()
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def roofline(flops: float, nbytes: float, *, peak_flops: float, bandwidth: float) -> dict:
    """The roofline bound of a computation of ``flops`` FLOPs touching ``nbytes`` bytes.

    ``compute_s = flops / peak``, ``memory_s = bytes / bandwidth``; the computation cannot take less
    than ``bound_s = max(compute_s, memory_s)`` on that hardware. ``intensity`` (FLOP/byte) above
    the ridge ``peak / bandwidth`` means compute-bound.
    """
    compute_s, memory_s = flops / peak_flops, nbytes / bandwidth
    return {
        "flops": flops,
        "bytes": nbytes,
        "intensity": flops / nbytes if nbytes else math.inf,
        "ridge": peak_flops / bandwidth,
        "compute_s": compute_s,
        "memory_s": memory_s,
        "bound_s": max(compute_s, memory_s),
        "limited_by": "compute" if compute_s >= memory_s else "memory",
    }
