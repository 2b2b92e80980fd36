"""The linear-head ViT baseline of ``fashion_mnist_add_vit.py``: the same encoder, data, optimizer
and budget, cross-entropy.

    python -m didiff_jax.main --config configs/fashion_mnist_vit.py --workdir runs/fmnist_vit
"""

from __future__ import annotations

from configs import common
from configs.fashion_mnist_add_vit import VIT


def get_config(arg: str | None = None):
    c = common.base(
        model={"name": "vit_ti16", **VIT},
        objective={"name": "classifier"},
        data=common.fashion_mnist_data(),
        optimizer=common.adamw(lr=1e-3, warmup_steps=200),
    )
    c.num_epochs = 2.0
    c.ema_decay = 0.999
    c.eval.samplers = [{"name": "classifier"}]
    return common.apply_variants(c, arg, common.fashion_mnist_variants())
