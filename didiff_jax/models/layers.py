"""Small building blocks shared by the networks (Flax NNX)."""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch's default for nn.Linear / nn.Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
torch_default_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> nnx.Initializer:
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def sinusoidal_embedding(x: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
    """``[cos(x f), sin(x f)]`` with ``f_i = exp(-ln(max_period) i / (dim/2))``, ``i < dim/2`` [ref].

    ``x``: [B] (sigma for DiDiRN, t for the diffusion heads). Returns [B, dim] in float32.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # [dim/2]
    args = jnp.asarray(x, jnp.float32)[:, None] * freqs[None]  # [B, dim/2]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def torch_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs, **kwargs) -> nnx.Linear:
    """``nnx.Linear`` initialised like PyTorch's ``nn.Linear``."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(in_features),
        rngs=rngs,
        **kwargs,
    )


def build_with_overrides(
    cls: type[nnx.Module],
    preset: dict[str, Any],
    overrides: dict[str, Any],
    *,
    num_classes: int,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """``cls(**preset, **overrides)``: the builders behind ``create_model``.

    An override the constructor does not take raises ``TypeError`` naming it, the closest valid
    option and all of them (a typo in a config must not pass silently).
    """
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "num_classes", "rngs"}
    for key in sorted(set(overrides) - allowed):
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(
            f"{cls.__name__} has no option {key!r}.{hint} Options: {', '.join(sorted(allowed))}"
        )
    return cls(num_classes=num_classes, rngs=rngs, **{**preset, **overrides})
