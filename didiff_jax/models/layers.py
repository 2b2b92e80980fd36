"""Small building blocks shared by the networks (Flax NNX)."""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

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


# ------------------------------------------------------------------------------------ GroupNorm


def _group_mean(v: jax.Array, num_groups: int) -> jax.Array:
    """[B, H, W, C] -> the mean over (H, W, C / G) of each group, per channel [B, 1, 1, C]."""
    B, H, W, C = v.shape
    m = jnp.mean(v.reshape(B, H * W, num_groups, C // num_groups), axis=(1, 3))  # [B, G]
    return jnp.repeat(m, C // num_groups, axis=1)[:, None, None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(
    x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, eps: float
) -> jax.Array:
    """GroupNorm of ``x`` [B, H, W, C] over (H, W, C / G) per group, then ``* scale + bias`` [C].

    The same arithmetic as ``nnx.GroupNorm`` (mean and E[x^2] - mean^2), with a hand-written
    gradient: two passes over the activations (the per-group sums, then dx) where the autodiff
    of the reshaped statistics takes several; GroupNorm is the DiDiRN block's conditioning, in every
    block.
    """
    return _group_norm_fwd(x, scale, bias, num_groups, eps)[0]


def _group_norm_fwd(x, scale, bias, num_groups, eps):
    mean = _group_mean(x, num_groups)  # [B, 1, 1, C]
    var = jnp.maximum(0.0, _group_mean(x * x, num_groups) - mean * mean)  # as Flax's fast variance
    rstd = lax.rsqrt(var + eps)
    y = (x - mean) * (rstd * scale) + bias
    return y, (x, scale, mean, rstd)


def _group_norm_bwd(num_groups, eps, residuals, g):
    x, scale, mean, rstd = residuals
    xhat = (x - mean) * rstd  # [B, H, W, C]
    d_bias = jnp.sum(g, axis=(0, 1, 2))  # [C]
    d_scale = jnp.sum(g * xhat, axis=(0, 1, 2))  # [C]
    dxhat = g * scale
    dx = rstd * (
        dxhat - _group_mean(dxhat, num_groups) - xhat * _group_mean(dxhat * xhat, num_groups)
    )
    return dx, d_scale, d_bias


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nnx.GroupNorm):
    """``nnx.GroupNorm`` (same parameters and names) computed by ``group_norm`` for the NHWC
    feature maps of the ResNets; anything else (masks, other ranks) goes to ``nnx.GroupNorm``."""

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        plain = (
            mask is None
            and x.ndim == 4
            and self.scale is not None
            and self.bias is not None
            and self.reduction_axes is None
            and self.axis_name is None
        )
        if not plain:
            return super().__call__(x, mask=mask)
        x, scale, bias = self.promote_dtype((x, self.scale[...], self.bias[...]), dtype=self.dtype)
        return group_norm(x, scale, bias, self.num_groups, self.epsilon)
