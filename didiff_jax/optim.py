"""Optimizers and learning-rate schedules (optax), and the EMA of parameters.

* ``lamb``: timm's LAMB as the reference uses it (SPEC 1.6): global grad-norm clip 1.0, Adam moments
  (0.9, 0.999, eps 1e-6), weight decay and the trust ratio only for parameters with ndim > 1.
* ``adamw``: decoupled weight decay on ndim > 1 parameters (the ADD recipe: clip 3.0).
* ``sgd``: momentum SGD with weight decay on ndim > 1 parameters.
All use linear warmup then cosine decay, stepped per optimizer step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def decay_mask(params) -> object:
    """True for parameters with ndim > 1 (kernels, embeddings); False for biases and norm scales."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    warmup = int(cfg.get("warmup_steps", 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else cfg.lr,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.get("end_lr", 0.0),
    )


def make_optimizer(
    cfg: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer named by ``cfg.name`` and its learning-rate schedule."""
    lr = learning_rate_schedule(cfg, total_steps)
    clip = cfg.get("grad_clip", None)
    wd = cfg.get("weight_decay", 0.0)
    if cfg.name == "lamb":
        core = [
            optax.scale_by_adam(
                b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999), eps=cfg.get("eps", 1e-6)
            ),
            optax.add_decayed_weights(wd, mask=decay_mask),
            optax.masked(optax.scale_by_trust_ratio(), decay_mask),
            optax.scale_by_learning_rate(lr),
        ]
    elif cfg.name == "adamw":
        core = [
            optax.adamw(
                lr,
                b1=cfg.get("b1", 0.9),
                b2=cfg.get("b2", 0.999),
                eps=cfg.get("eps", 1e-8),
                weight_decay=wd,
                mask=decay_mask,
            )  # fmt: skip
        ]
    elif cfg.name == "sgd":
        core = [
            optax.add_decayed_weights(wd, mask=decay_mask),
            optax.sgd(lr, momentum=cfg.get("momentum", 0.9), nesterov=cfg.get("nesterov", False)),
        ]
    else:
        raise ValueError(f"optimizer.name must be 'lamb', 'adamw' or 'sgd', got {cfg.name!r}")
    chain = ([optax.clip_by_global_norm(clip)] if clip else []) + core
    return optax.chain(*chain), lr


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """The EMA decay at optimizer step ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``,
    timm's warm-up, so that a short run's EMA is not dominated by its initial weights."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema, params, decay: float):
    """``ema <- decay * ema + (1 - decay) * params`` for floating leaves; other leaves (RNG keys,
    counters) take the current value."""

    def update(e, p):
        if jnp.issubdtype(p.dtype, jnp.floating):
            return decay * e + (1.0 - decay) * p
        return p

    return jax.tree.map(update, ema, params)
