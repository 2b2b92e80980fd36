"""ADD/TDD on Fashion-MNIST: a CPU-sized ViT encoder (patch 4 on 28 px) with the diffusion head.

    python -m didiff_jax.main --config configs/fashion_mnist_add_vit.py --workdir runs/fmnist_add_vit

Variants: those of ``common.fashion_mnist_variants`` (``smoke``, ``noise=S``, ``ratio=R``, ...) and
``mdd`` (the masked-diffusion objective on the same network), ``nocoef`` (cross-entropy without the
abar coefficient), ``regression`` (the noise-prediction ablation).
"""

from __future__ import annotations

from configs import common

VIT = {"image_size": 28, "patch_size": 4, "width": 96, "depth": 4, "num_heads": 3, "in_channels": 1,
       "dtype": "float32"}  # fmt: skip


def get_config(arg: str | None = None):
    c = common.base(
        model={"name": "add_vit_ti16", **VIT, "cond_depth": 1, "head_width": 256, "head_depth": 2},
        objective=common.onehot_objective("add", feature_reuse=4, loss="cross_entropy"),
        data=common.fashion_mnist_data(),
        optimizer=common.adamw(lr=1e-3, warmup_steps=200),
    )
    c.num_epochs = 2.0
    c.ema_decay = 0.999
    c.eval.samplers = [
        common.onehot_sampler(1.0, (1, 2, 5, 10, 20)),
        common.onehot_sampler(1.0, (10,), to_one="softmax"),
        common.onehot_sampler(2.0, (10,)),
    ]

    def mdd(c):
        c.objective = common.mdd_objective(feature_reuse=4)
        c.eval.samplers = [{"name": "masked", "steps": (1, 2, 5, 10)}]

    return common.apply_variants(c, arg, common.fashion_mnist_variants(
        mdd=mdd,
        nocoef=lambda c: c.objective.update(use_coefficient=False),
        regression=lambda c: c.objective.update(loss="regression"),
    ))  # fmt: skip
