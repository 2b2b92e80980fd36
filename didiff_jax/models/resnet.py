"""ResNet classifiers and DiDiRN, the diffusion-aware ResNet of DiDiCM (SPEC 1.4), in Flax NNX.

Both share stems and residual blocks; DiDiRN adds one conditioning path per block:

    h = block(x)                      # the usual ResNet path up to its last BatchNorm
    h = h + Linear(SiLU(emb))         # a per-channel bias from the (sigma, x_t) embedding
    h = SiLU(GroupNorm_32(h))         # GroupNorm in float32
    out = ReLU(h + shortcut(x))       # the skip is added after GroupNorm, as in [ref]

with ``emb = MLP(sinusoid_256(sigma)) + Embedding(K, 128)(x_t)``. The conditioning costs a bias and
a norm per block, not a second network. Layout and parameter names follow torchvision/timm
(``conv1``, ``bn1``, ``layer{1..4}[i]``, ``downsample``, ``fc``) so checkpoints map one to one.

Images are NHWC. Convolutions use PyTorch's explicit symmetric padding (not XLA's "SAME", which
pads stride-2 convolutions asymmetrically), so outputs match the PyTorch networks exactly.
``conv_form`` (``didiff_jax.models.conv``): ``auto`` computes each convolution in the form that
measures fastest for its shape on the backend (XLA's convolution off the CPU); ``xla`` forces
``lax.conv_general_dilated`` everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from didiff_jax import diffusion as D
from didiff_jax.models.conv import ConvFn, max_pool
from didiff_jax.models.layers import (
    GroupNorm,
    build_with_overrides,
    sinusoidal_embedding,
    torch_linear,
)

STAGE_STRIDES = (1, 2, 2, 2)
DEPTHS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STEMS = ("reference", "imagenet", "small")
# How a DiDiRN block takes the (sigma, x_t) embedding: ``bias`` adds a per-channel bias before the
# GroupNorm [ref]; ``scale_shift`` normalises first and then scales and shifts per channel (adaGN,
# as in guided diffusion's ResBlock), so the conditioning survives any number of channels per group.
COND_MODES = ("bias", "scale_shift")
# What the DiDiRN head outputs: ``score`` [ref] the log concrete score itself; ``x0`` logits of the
# clean label given (image, x_t, sigma), turned into the score in closed form
# (``diffusion.log_score_from_x0_logits``), so the network is a conditioned classifier.
PARAMETERIZATIONS = ("score", "x0")

# timm/torchvision ResNet init: kaiming normal, fan_out, ReLU gain. [ref] DiDiRN keeps PyTorch's
# default (uniform, fan_in) for every conv and linear layer.
kaiming_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
torch_default_conv = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _num_groups(channels: int, groups: int = 32) -> int:
    """32 groups [ref]; fewer when a shrunk width has fewer (or indivisible) channels."""
    return math.gcd(groups, channels)


class _Ctx:
    """Construction options threaded through the layers (dtype and init)."""

    def __init__(
        self,
        dtype: jnp.dtype,
        conv_init: Callable,
        rngs: nnx.Rngs,
        norm_groups: int = 32,
        conv_form: str = "auto",
        cond: str = "bias",
    ):
        if cond not in COND_MODES:
            raise ValueError(f"cond must be one of {COND_MODES}, got {cond!r}")
        self.dtype, self.conv_init, self.rngs = dtype, conv_init, rngs
        self.norm_groups, self.cond = norm_groups, cond
        self.conv_fn = ConvFn(conv_form)

    def conv(self, cin: int, cout: int, k: int, stride: int = 1) -> nnx.Conv:
        pad = k // 2
        return nnx.Conv(
            cin,
            cout,
            (k, k),
            strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            kernel_init=self.conv_init,
            dtype=self.dtype,
            conv_general_dilated=self.conv_fn,
            rngs=self.rngs,
        )

    def bn(self, c: int) -> nnx.BatchNorm:
        # PyTorch momentum 0.1 == Flax momentum 0.9; statistics and scale kept in float32.
        return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, dtype=self.dtype, rngs=self.rngs)


class Stem(nnx.Module):
    """``reference``: conv3x3/s1 + BN + ReLU + maxpool3x3/s2 [ref DiDiRN]; ``imagenet``: conv7x7/s2 +
    BN + ReLU + maxpool (torchvision); ``small``: conv3x3/s1 + BN + ReLU, no pool (28-32 px)."""

    def __init__(self, kind: str, cin: int, cout: int, ctx: _Ctx):
        if kind not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {kind!r}")
        self.kind = kind
        self.conv1 = ctx.conv(
            cin, cout, 7 if kind == "imagenet" else 3, 2 if kind == "imagenet" else 1
        )
        self.bn1 = ctx.bn(cout)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
        if self.kind != "small":
            x = max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        return x


class Downsample(nnx.Module):
    """The projection shortcut: conv1x1 (stride) + BN (torchvision ``downsample.0/1``)."""

    def __init__(self, cin: int, cout: int, stride: int, ctx: _Ctx):
        self.conv = ctx.conv(cin, cout, 1, stride)
        self.bn = ctx.bn(cout)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.bn(self.conv(x), use_running_average=not train)


class Conditioning(nnx.Module):
    """The DiDiRN per-block conditioning on ``emb`` [B, E].

    ``bias`` [ref]: ``SiLU(GroupNorm(h + Linear(SiLU(emb))))``. With one channel per group (width
    16: 16 and 32 channels in gcd(32, C) groups) the GroupNorm subtracts each channel's own mean, so
    the bias, constant over the map, is removed exactly: the block no longer sees ``x_t`` or
    ``sigma``.
    ``scale_shift``: ``SiLU(GroupNorm(h) * (1 + gamma) + beta)`` with ``[gamma, beta] =
    Linear(SiLU(emb))``, which no normalisation downstream can undo.
    """

    def __init__(self, channels: int, emb_dim: int, ctx: _Ctx):
        self.mode = ctx.cond
        out = channels if self.mode == "bias" else 2 * channels
        self.emb_proj = torch_linear(emb_dim, out, rngs=ctx.rngs)
        self.norm = GroupNorm(
            channels, num_groups=_num_groups(channels, ctx.norm_groups), epsilon=1e-5, rngs=ctx.rngs
        )
        self.dtype = ctx.dtype

    def __call__(self, h: jax.Array, emb: jax.Array) -> jax.Array:
        proj = self.emb_proj(nnx.silu(emb))[:, None, None, :]  # [B, 1, 1, C or 2C] float32
        h = h.astype(jnp.float32)
        if self.mode == "bias":
            h = self.norm(h + proj)
        else:
            gamma, beta = jnp.split(proj, 2, axis=-1)
            h = self.norm(h) * (1.0 + gamma) + beta
        return nnx.silu(h).astype(self.dtype)


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, ctx: _Ctx, emb_dim: int | None):
        cout = width * self.expansion
        self.conv1, self.bn1 = ctx.conv(cin, width, 3, stride), ctx.bn(width)
        self.conv2, self.bn2 = ctx.conv(width, cout, 3), ctx.bn(cout)
        self.downsample = Downsample(cin, cout, stride, ctx) if stride != 1 or cin != cout else None
        self.cond = Conditioning(cout, emb_dim, ctx) if emb_dim else None

    def residual(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        h = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        return self.bn2(self.conv2(h), use_running_average=ura)

    def __call__(self, x: jax.Array, train: bool, emb: jax.Array | None = None) -> jax.Array:
        h = self.residual(x, train)
        if self.cond is not None:
            h = self.cond(h, emb)
        skip = x if self.downsample is None else self.downsample(x, train)
        return nnx.relu(h + skip)


class Bottleneck(BasicBlock):
    """conv1x1 -> conv3x3 (stride here, torchvision v1.5) -> conv1x1 (4x), each with BN."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, ctx: _Ctx, emb_dim: int | None):
        cout = width * self.expansion
        self.conv1, self.bn1 = ctx.conv(cin, width, 1), ctx.bn(width)
        self.conv2, self.bn2 = ctx.conv(width, width, 3, stride), ctx.bn(width)
        self.conv3, self.bn3 = ctx.conv(width, cout, 1), ctx.bn(cout)
        self.downsample = Downsample(cin, cout, stride, ctx) if stride != 1 or cin != cout else None
        self.cond = Conditioning(cout, emb_dim, ctx) if emb_dim else None

    def residual(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        h = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        h = nnx.relu(self.bn2(self.conv2(h), use_running_average=ura))
        return self.bn3(self.conv3(h), use_running_average=ura)


class _Backbone(nnx.Module):
    """Stem + four stages + global average pool + ``fc``; blocks conditioned when ``emb_dim``."""

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int,
        stem: str,
        width: int,
        in_channels: int,
        dtype: jnp.dtype,
        conv_init: Callable,
        emb_dim: int | None,
        rngs: nnx.Rngs,
        norm_groups: int = 32,
        conv_form: str = "auto",
        cond: str = "bias",
    ):
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        ctx = _Ctx(dtype, conv_init, rngs, norm_groups, conv_form, cond)
        block = BasicBlock if depth < 50 else Bottleneck
        self.dtype = dtype
        self.stem = Stem(stem, in_channels, width, ctx)
        cin = width
        stages = []
        for i, (n, stride) in enumerate(zip(DEPTHS[depth], STAGE_STRIDES, strict=True)):
            stage_width = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, stage_width, stride if j == 0 else 1, ctx, emb_dim))
                cin = stage_width * block.expansion
            stages.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = torch_linear(cin, num_classes, rngs=rngs)
        self.num_features = cin

    def features(self, images: jax.Array, train: bool, emb: jax.Array | None = None) -> jax.Array:
        """[B, H, W, C] images -> [B, num_features] pooled features (float32)."""
        x = self.stem(images.astype(self.dtype), train)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for blk in stage:
                x = blk(x, train, emb)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class ResNet(_Backbone):
    """Standard ResNet classifier: ``model(images, *, train) -> logits [B, K]`` (float32)."""

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int,
        rngs: nnx.Rngs,
        stem: str = "imagenet",
        width: int = 64,
        in_channels: int = 3,
        dtype: jnp.dtype = jnp.float32,
        conv_form: str = "auto",
    ):
        super().__init__(
            depth,
            num_classes=num_classes,
            stem=stem,
            width=width,
            in_channels=in_channels,
            dtype=dtype,
            conv_init=kaiming_fan_out,
            emb_dim=None,
            rngs=rngs,
            conv_form=conv_form,
        )

    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        return self.fc(self.features(images, train))


class SigmaEmbedding(nnx.Module):
    """``MLP(sinusoid_256(sigma))``: Linear(256, 128) -> SiLU -> Linear(128, 128) [ref]."""

    def __init__(self, emb_dim: int, rngs: nnx.Rngs, freq_dim: int = 256):
        self.freq_dim = freq_dim
        self.fc1 = torch_linear(freq_dim, emb_dim, rngs=rngs)
        self.fc2 = torch_linear(emb_dim, emb_dim, rngs=rngs)

    def __call__(self, sigma: jax.Array) -> jax.Array:
        return self.fc2(nnx.silu(self.fc1(sinusoidal_embedding(sigma, self.freq_dim))))


class DiDiRN(_Backbone):
    """Diffusion-aware ResNet: ``model(images, x_t, sigma, *, train) -> log_score [B, K]``.

    ``log_score_y`` estimates ``log p_t(y | img) - log p_t(x_t | img)``; the entry at ``x_t`` is set
    to exactly 0 (score 1). ``model.logits(...)`` gives the raw output before that (with
    ``parameterization='x0'``: logits of the clean label, from which the score is computed). The label
    embedding is a one-hot matmul (shards cleanly with a batch-sharded ``x_t``), initialised N(0, 1).
    """

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int,
        rngs: nnx.Rngs,
        stem: str = "reference",
        width: int = 64,
        in_channels: int = 3,
        emb_dim: int = 128,
        dtype: jnp.dtype = jnp.float32,
        norm_groups: int = 32,
        conv_form: str = "auto",
        cond: str = "bias",
        parameterization: str = "score",
    ):
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}"
            )
        # GroupNorm groups of the conditioning: 32 [ref], or the channel count where a narrow network
        # has fewer. ``norm_groups=32 * width // 64`` keeps the reference's channels per group
        # instead (measured on Fashion-MNIST at width 16: 86.87% against 87.31%, see README).
        super().__init__(
            depth,
            num_classes=num_classes,
            stem=stem,
            width=width,
            in_channels=in_channels,
            dtype=dtype,
            conv_init=torch_default_conv,
            emb_dim=emb_dim,
            rngs=rngs,
            norm_groups=norm_groups,
            conv_form=conv_form,
            cond=cond,
        )
        self.num_classes = num_classes
        self.parameterization = parameterization
        self.sigma_embed = SigmaEmbedding(emb_dim, rngs)
        self.label_embed = nnx.Param(jax.random.normal(rngs.params(), (num_classes, emb_dim)))

    def embed(self, x_t: jax.Array, sigma: jax.Array) -> jax.Array:
        """``emb = MLP(sinusoid(sigma)) + E[x_t]`` -> [B, emb_dim] (float32)."""
        onehot = jax.nn.one_hot(x_t, self.num_classes, dtype=jnp.float32)  # [B, K]
        return self.sigma_embed(sigma) + onehot @ self.label_embed[...]

    def logits(self, images: jax.Array, x_t: jax.Array, sigma: jax.Array, *, train: bool):
        """The raw network output [B, K] (the entry at x_t not yet zeroed)."""
        return self.fc(self.features(images, train, self.embed(x_t, sigma)))

    def __call__(self, images: jax.Array, x_t: jax.Array, sigma: jax.Array, *, train: bool):
        out = self.logits(images, x_t, sigma, train=train)
        if self.parameterization == "x0":
            return D.log_score_from_x0_logits(out, x_t, sigma)
        return jnp.where(jax.nn.one_hot(x_t, self.num_classes, dtype=bool), 0.0, out)


def _builder(cls: type, depth: int) -> Callable[..., nnx.Module]:
    def build(*, num_classes: int, rngs: nnx.Rngs, **overrides) -> nnx.Module:
        return build_with_overrides(
            cls, {"depth": depth}, overrides, num_classes=num_classes, rngs=rngs
        )

    build.__name__ = f"{cls.__name__.lower()}{depth}"
    build.__doc__ = (
        f"{cls.__name__}-{depth}: options {cls.__name__}.__init__ (stem, width, dtype, ...)."
    )
    return build


BUILDERS: dict[str, Callable[..., nnx.Module]] = {
    **{f"resnet{d}": _builder(ResNet, d) for d in DEPTHS},
    **{f"didirn{d}": _builder(DiDiRN, d) for d in DEPTHS},
}
