"""Sequence denoiser for multi-token generation (captions), shared by TDD and MDD (Flax NNX).

SPEC section 2, "Multi-token": each of the N tokens of a caption is diffused independently over the
vocabulary of V words, and one Transformer denoises all N positions in parallel, with the image
injected through self-attention:

* ``encode(images) -> cond`` [B, L, width]: ``vit.ViTEncoder`` without class tokens (patch conv +
  learned position embeddings + ``encoder_depth`` pre-norm blocks + LayerNorm), run once per image;
  its parameters sit under ``encoder``.
* ``denoise(x_t, t, cond) -> logits`` [B, N, V]: the N noisy tokens are embedded
  (``input_kind="onehot"``, TDD: Gaussian-noised one-hot vectors [B, N, V] through ``Linear(V -> width)``;
  ``input_kind="tokens"``, MDD: ints [B, N] in [0, V], V = mask token, through ``Embed(V + 1, width)``),
  learned token position embeddings are added, the sequence ``[cond, tokens]`` gets a time embedding
  ``MLP(sinusoidal_embedding(1000 t, 256))`` added to every position, ``depth`` pre-norm Transformer
  blocks run on it, and the N token outputs go through LayerNorm + ``Linear(width -> V)``.
* ``null_condition(B)``: learned null image tokens [B, L, width] for classifier-free guidance.

Compute ``dtype`` float32 or bfloat16 (parameters float32, LayerNorm/softmax float32); logits are
float32. ``t`` is in [0, 1] for both kinds (the TDD Gaussian schedule and the MDD mask schedule).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from didiff_jax.models.layers import build_with_overrides, sinusoidal_embedding
from didiff_jax.models.vit import (
    Builder,
    LayerNorm32,
    TransformerBlock,
    ViTEncoder,
    check_compute_dtype,
    dense,
    embed_init,
)


class CaptionDenoiser(nnx.Module):
    """Transformer over ``[image tokens, N noisy token states]``; returns float32 logits [B, N, V].

    ``num_classes`` is the vocabulary size V (without the MDD mask token). See the module docstring.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        seq_len: int,
        input_kind: str,
        patch_size: int = 16,
        image_size: int = 224,
        in_channels: int = 3,
        width: int = 512,
        encoder_depth: int = 6,
        depth: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        dtype = check_compute_dtype(dtype)
        if input_kind not in ("onehot", "tokens"):
            raise ValueError(f"input_kind must be 'onehot' or 'tokens', got {input_kind!r}")
        self.num_classes = num_classes
        self.seq_len = seq_len
        self.input_kind = input_kind
        self.dtype = dtype

        self.encoder = ViTEncoder(  # no class tokens: every image token is part of the condition
            patch_size=patch_size,
            image_size=image_size,
            in_channels=in_channels,
            width=width,
            depth=encoder_depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            dtype=dtype,
            rngs=rngs,
        )
        num_image_tokens = self.encoder.patch_embed.num_patches
        self.null_tokens = nnx.Param(embed_init(rngs.params(), (num_image_tokens, width)))

        # Token denoiser.
        if input_kind == "onehot":
            self.token_in = dense(num_classes, width, dtype=dtype, rngs=rngs)
        else:
            self.token_in = nnx.Embed(
                num_classes + 1,
                width,
                embedding_init=embed_init,
                dtype=dtype,
                param_dtype=jnp.float32,
                rngs=rngs,
            )
        self.token_pos = nnx.Param(embed_init(rngs.params(), (seq_len, width)))
        self.time_fc1 = dense(256, width, dtype=dtype, rngs=rngs)
        self.time_fc2 = dense(width, width, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List(
            [
                TransformerBlock(
                    width, num_heads, mlp_ratio, dtype=dtype, dropout=dropout, rngs=rngs
                )
                for _ in range(depth)
            ]
        )
        self.norm = LayerNorm32(width, rngs=rngs)
        self.out = dense(width, num_classes, dtype=dtype, rngs=rngs, zero=True)

    def encode(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """Image tokens [B, L, width] (float32), computed once per image."""
        return self.encoder(images, train=train).astype(jnp.float32)  # [B, L, W]

    def null_condition(self, batch_size: int) -> jax.Array:
        """The learned null image tokens broadcast to [batch_size, L, width] (float32)."""
        null = self.null_tokens[...]
        return jnp.broadcast_to(null, (batch_size,) + null.shape)

    def denoise(
        self, x_t: jax.Array, t: jax.Array, cond: jax.Array, *, train: bool = False
    ) -> jax.Array:
        """Float32 logits [B, N, V]; ``x_t`` [B, N, V] (onehot) or int [B, N] (tokens), ``t`` [B]."""
        if self.input_kind == "onehot":
            if x_t.ndim != 3 or x_t.shape[1:] != (self.seq_len, self.num_classes):
                raise ValueError(
                    f"x_t must be [B, {self.seq_len}, {self.num_classes}], got {x_t.shape}"
                )
            h = self.token_in(x_t.astype(self.dtype))  # [B, N, W]
        else:
            if x_t.ndim != 2 or x_t.shape[1] != self.seq_len:
                raise ValueError(f"x_t must be int [B, {self.seq_len}], got {x_t.shape}")
            h = self.token_in(x_t)  # [B, N, W]
        h = h + self.token_pos[...].astype(h.dtype)
        temb = sinusoidal_embedding(jnp.asarray(t) * 1000.0, 256).astype(self.dtype)  # [B, 256]
        temb = self.time_fc2(nnx.silu(self.time_fc1(temb)))  # [B, W]
        x = jnp.concatenate([cond.astype(h.dtype), h], axis=1) + temb[:, None]  # [B, L + N, W]
        for blk in self.blocks:
            x = blk(x, train=train)
        x = self.norm(x[:, -self.seq_len :])  # [B, N, W]
        return self.out(x).astype(jnp.float32)  # [B, N, V]

    def __call__(
        self,
        images: jax.Array,
        x_t: jax.Array,
        t: jax.Array,
        *,
        train: bool,
        drop_cond: jax.Array | None = None,
    ) -> jax.Array:
        """``denoise(x_t, t, encode(images))``; rows where ``drop_cond`` [B] is True get null tokens."""
        cond = self.encode(images, train=train)  # [B, L, W]
        if drop_cond is not None:
            cond = jnp.where(drop_cond[:, None, None], self.null_condition(cond.shape[0]), cond)
        return self.denoise(x_t, t, cond, train=train)  # [B, N, V]


def _require_seq_len(overrides: dict[str, Any]) -> None:
    if "seq_len" not in overrides:
        raise TypeError("caption builders need the override seq_len (caption length N)")


def caption_tdd(*, num_classes: int, rngs: nnx.Rngs, **overrides: Any) -> nnx.Module:
    """TDD caption denoiser (Gaussian-noised one-hot inputs); ``seq_len`` override required."""
    _require_seq_len(overrides)
    preset = dict(input_kind="onehot")
    return build_with_overrides(
        CaptionDenoiser, preset, overrides, num_classes=num_classes, rngs=rngs
    )


def caption_mdd(*, num_classes: int, rngs: nnx.Rngs, **overrides: Any) -> nnx.Module:
    """MDD caption denoiser (int tokens, V = mask token); ``seq_len`` override required."""
    _require_seq_len(overrides)
    preset = dict(input_kind="tokens")
    return build_with_overrides(
        CaptionDenoiser, preset, overrides, num_classes=num_classes, rngs=rngs
    )


BUILDERS: dict[str, Builder] = {"caption_tdd": caption_tdd, "caption_mdd": caption_mdd}
