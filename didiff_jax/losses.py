"""Training objectives: ``make_objective(config) -> loss_fn(model, batch, key) -> (loss, metrics)``.

A plain ``if`` maps the config name to a builder:

* ``didicm``: score entropy on the uniform CTMC (SPEC 1.3), weighted by ``dsigma(t)``; hard labels,
  or the soft-label loss when the batch carries ``label_probs`` (mixup, cutmix, label smoothing).
* ``add``: Gaussian one-hot diffusion (SPEC 2): abar-weighted cross-entropy (coefficient on/off),
  the noise-regression ablation, condition dropout for guidance, feature reuse (encode once, tile).
* ``mdd``: masked diffusion of the single label (the TDD paper's baseline) on the same network as
  ``add``; a masked label is the all-zero input vector. With ``batch["tokens"]`` (captions) every
  token is masked independently and the network (``caption_mdd``) takes the int tokens.
* ``tdd``: ``add`` on token sequences (captions, SPEC 2 "Multi-token"): each token of
  ``batch["tokens"]`` [B, N] is a Gaussian-noised one-hot vector over the vocabulary.
* ``classifier``: cross-entropy baseline (soft targets when the batch has ``label_probs``).

``batch``: ``image`` [B, H, W, C] float, ``label`` int [B], optional ``label_probs`` [B, K]; caption
batches carry ``tokens`` int [B, N] instead of ``label``.
The maths comes from ``didiff_jax.diffusion``; this module only wires it to the networks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from didiff_jax import diffusion as D

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]

# [ref] clamps the log-score of its soft-label loss to [-20, 20] (and not that of the hard-label one).
SOFT_LOG_SCORE_CLIP = 20.0


def ctmc_schedule(cfg: ml_collections.ConfigDict) -> D.LogLinear | D.Geometric:
    """The CTMC noise schedule named in the objective config (``loglinear`` [ref] or ``geometric``)."""
    name = cfg.get("schedule", "loglinear")
    if name == "loglinear":
        return D.LogLinear(eps=cfg.get("eps", 1e-3))
    if name == "geometric":
        return D.Geometric(cfg.get("sigma_min", 1e-4), cfg.get("sigma_max", 20.0))
    raise ValueError(f"objective.schedule must be 'loglinear' or 'geometric', got {name!r}")


def gaussian_schedule(cfg: ml_collections.ConfigDict) -> D.CosineAbar | D.LinearBetaAbar:
    """The abar schedule of the one-hot objectives (``cosine`` or ``linear``; ``num_timesteps`` or None)."""
    name, T = cfg.get("schedule", "cosine"), cfg.get("num_timesteps", 0) or None  # 0: continuous
    if name == "cosine":
        return D.CosineAbar(num_timesteps=T)
    if name == "linear":
        return D.LinearBetaAbar(num_timesteps=T)
    raise ValueError(f"objective.schedule must be 'cosine' or 'linear', got {name!r}")


def onehot_sampling(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The keyword arguments of ``samplers.onehot_sample`` that the training objective fixes.

    ``schedule`` (the abar of training), ``lam`` (the lambda-hot scale of the clean vectors) and
    ``parameterization`` (``eps`` for the noise-regression ablation, whose network predicts the
    noise rather than logits of ``y_0``). Sampling with other values than training used would
    decode the network's output wrongly, so every ADD/TDD caller takes them from here.
    """
    return dict(
        schedule=gaussian_schedule(cfg),
        lam=cfg.get("lambda_hot", 1.0),
        parameterization="eps" if cfg.get("loss", "cross_entropy") == "regression" else "x0",
    )


def _targets(batch: dict, num_classes: int) -> jax.Array:
    if "label_probs" in batch:
        return batch["label_probs"]
    return jax.nn.one_hot(batch["label"], num_classes)


def _stratified(cfg: ml_collections.ConfigDict) -> bool:
    """``objective.t_sampling``: ``uniform`` (i.i.d. per example [ref]) or ``stratified``."""
    name = cfg.get("t_sampling", "uniform")
    if name not in ("uniform", "stratified"):
        raise ValueError(f"objective.t_sampling must be 'uniform' or 'stratified', got {name!r}")
    return name == "stratified"


def didicm_objective(cfg: ml_collections.ConfigDict, num_classes: int) -> LossFn:
    schedule = ctmc_schedule(cfg)
    # ``log_score_clip``: 0 / None [ref]: no clamp on the hard-label loss, [-20, 20] on the
    # soft-label one; > 0 clamps both at that value (a guard against overflow at high learning rates).
    clip = cfg.get("log_score_clip", None) or None
    soft_clip = clip or SOFT_LOG_SCORE_CLIP
    stratified = _stratified(cfg)

    def loss_fn(model, batch, key):
        images, labels = batch["image"], batch["label"]
        B = labels.shape[0]
        k_t, k_x = jax.random.split(key)
        t = D.sample_t(k_t, (B,), stratified=stratified)
        sigma, dsigma = schedule.sigma(t), schedule.dsigma(t)
        if "label_probs" in batch:
            p_t = D.uniform_marginal(batch["label_probs"], sigma)  # [B, K]
            x_t = D.sample_categorical(k_x, p_t)
            log_score = model(images, x_t, sigma, train=True)
            per_example = D.soft_score_entropy(log_score, x_t, p_t, log_score_clip=soft_clip)
        else:
            x_t = D.sample_uniform(k_x, labels, sigma, num_classes)
            log_score = model(images, x_t, sigma, train=True)
            per_example = D.score_entropy(log_score, x_t, labels, sigma, log_score_clip=clip)
        loss = jnp.mean(dsigma * per_example)
        return loss, {"loss": loss, "score_entropy": jnp.mean(per_example)}

    return loss_fn


def classifier_objective(cfg: ml_collections.ConfigDict, num_classes: int) -> LossFn:
    def loss_fn(model, batch, key):
        logits = model(batch["image"], train=True)
        targets = _targets(batch, num_classes)
        loss = jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1))
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, {"loss": loss, "train_top1": acc}

    return loss_fn


def _encode_tiled(model, batch: dict, key: jax.Array, reuse: int, drop_prob: float):
    """Encode each image once, tile the condition ``reuse`` times (feature reuse) and drop it to
    the learned null condition with probability ``drop_prob`` (for classifier-free guidance)."""
    c = model.encode(batch["image"], train=True)  # [B, D] (or image tokens [B, L, D])
    c = jnp.repeat(c, reuse, axis=0)  # [B * R, ...]
    if drop_prob > 0:
        drop = jax.random.uniform(key, (c.shape[0],)) < drop_prob
        drop = jnp.reshape(drop, drop.shape + (1,) * (c.ndim - 1))
        c = jnp.where(drop, model.null_condition(c.shape[0]), c)
    return c


def add_objective(cfg: ml_collections.ConfigDict, num_classes: int) -> LossFn:
    schedule = gaussian_schedule(cfg)
    reuse = cfg.get("feature_reuse", 1)
    drop_prob = cfg.get("cond_drop_prob", 0.1)
    lam = cfg.get("lambda_hot", 1.0)
    use_coefficient = cfg.get("use_coefficient", True)
    regression = cfg.get("loss", "cross_entropy") == "regression"
    if cfg.get("loss", "cross_entropy") not in ("cross_entropy", "regression"):
        raise ValueError(
            f"objective.loss must be 'cross_entropy' or 'regression', got {cfg.loss!r}"
        )

    def loss_fn(model, batch, key):
        k_drop, k_t, k_eps = jax.random.split(key, 3)
        c = _encode_tiled(model, batch, k_drop, reuse, drop_prob)
        labels = jnp.repeat(batch["label"], reuse)
        targets = jnp.repeat(_targets(batch, num_classes), reuse, axis=0)  # [B * R, K]
        t = schedule.sample_t(k_t, labels.shape)
        abar = schedule.abar(t)
        eps = jax.random.normal(k_eps, targets.shape)
        y_t = D.gaussian_onehot_forward(lam * targets, abar, eps)
        out = model.denoise(y_t, t, c, train=True)
        if regression:
            per_example = D.noise_regression_loss(out, eps)
        else:
            per_example = D.weighted_cross_entropy(
                out, targets, abar, use_coefficient=use_coefficient
            )
        loss = jnp.mean(per_example)
        return loss, {"loss": loss}

    return loss_fn


def mask_schedule(cfg: ml_collections.ConfigDict) -> D.MaskLinear | D.MaskCosine:
    """The keep schedule of the masked objective (``linear`` or ``cosine``)."""
    name = cfg.get("schedule", "linear")
    if name not in ("linear", "cosine"):
        raise ValueError(f"objective.schedule of 'mdd' must be 'linear' or 'cosine', got {name!r}")
    return D.MaskCosine() if name == "cosine" else D.MaskLinear()


def mdd_objective(cfg: ml_collections.ConfigDict, num_classes: int) -> LossFn:
    schedule = mask_schedule(cfg)
    reuse = cfg.get("feature_reuse", 1)
    drop_prob = cfg.get("cond_drop_prob", 0.1)

    def loss_fn(model, batch, key):
        k_drop, k_t, k_mask = jax.random.split(key, 3)
        c = _encode_tiled(model, batch, k_drop, reuse, drop_prob)
        if "tokens" in batch:  # captions: per-token masking, loss per token
            tokens = jnp.repeat(batch["tokens"], reuse, axis=0)  # [B * R, N]
            t = D.sample_t(k_t, tokens.shape[:1])
            x_t = D.mask_corrupt(k_mask, tokens, schedule.alpha(t), mask_id=num_classes)
            logits = model.denoise(x_t, t, c, train=True)  # [B * R, N, V]
            per_example = D.masked_cross_entropy(logits, tokens, x_t, t, schedule, num_classes)
            loss = jnp.mean(per_example) / tokens.shape[1]
            return loss, {"loss": loss}
        labels = jnp.repeat(batch["label"], reuse)
        t = D.sample_t(k_t, labels.shape)
        x_t = D.mask_corrupt(k_mask, labels, schedule.alpha(t), mask_id=num_classes)
        y_t = jax.nn.one_hot(x_t, num_classes)  # the mask id is out of range: all zeros
        logits = model.denoise(y_t, t, c, train=True)
        loss = jnp.mean(D.masked_cross_entropy(logits, labels, x_t, t, schedule, num_classes))
        return loss, {"loss": loss}

    return loss_fn


def tdd_objective(cfg: ml_collections.ConfigDict, num_classes: int) -> LossFn:
    """TDD: ``-abar_t sum_n log p(x_0,n | y_t, c)`` over the N tokens of each caption (one t per
    caption), reported per token; condition dropout for guidance and feature reuse as in ``add``."""
    schedule = gaussian_schedule(cfg)
    reuse = cfg.get("feature_reuse", 1)
    drop_prob = cfg.get("cond_drop_prob", 0.1)
    lam = cfg.get("lambda_hot", 1.0)
    use_coefficient = cfg.get("use_coefficient", True)

    def loss_fn(model, batch, key):
        k_drop, k_t, k_eps = jax.random.split(key, 3)
        c = _encode_tiled(model, batch, k_drop, reuse, drop_prob)  # [B * R, L, W]
        tokens = jnp.repeat(batch["tokens"], reuse, axis=0)  # [B * R, N]
        targets = jax.nn.one_hot(tokens, num_classes)  # [B * R, N, V]
        t = schedule.sample_t(k_t, tokens.shape[:1])
        abar = schedule.abar(t)
        y_t = D.sample_gaussian_onehot(k_eps, lam * targets, abar)
        logits = model.denoise(y_t, t, c, train=True)  # [B * R, N, V]
        per_example = D.weighted_cross_entropy(logits, targets, abar,
                                               use_coefficient=use_coefficient)  # fmt: skip
        loss = jnp.mean(per_example) / tokens.shape[1]
        token_acc = jnp.mean(jnp.argmax(logits, axis=-1) == tokens)
        return loss, {"loss": loss, "token_acc": token_acc}

    return loss_fn


def make_objective(cfg: ml_collections.ConfigDict, num_classes: int) -> LossFn:
    """The loss function named by ``cfg.name``."""
    if cfg.name == "didicm":
        return didicm_objective(cfg, num_classes)
    if cfg.name == "classifier":
        return classifier_objective(cfg, num_classes)
    if cfg.name == "add":
        return add_objective(cfg, num_classes)
    if cfg.name == "mdd":
        return mdd_objective(cfg, num_classes)
    if cfg.name == "tdd":
        return tdd_objective(cfg, num_classes)
    raise ValueError(
        f"objective.name must be 'didicm', 'add', 'mdd', 'tdd' or 'classifier', got {cfg.name!r}"
    )
