"""ADD/TDD ViT-B/16 on ImageNet-1k (SPEC 2): AdamW lr 1e-4, wd 0.3, batch 4096, 500 epochs (20
warmup), grad clip 3.0, RandAugment m9, label smoothing 0.1, EMA 0.9999, feature reuse 4,
condition dropout 0.1.

    python -m didiff_jax.main --config configs/imagenet_add_vitb16.py --workdir gs://BUCKET/add_vitb16

Expected (the paper): 82.8 top-1 (83.0 without the abar coefficient). Variants: ``nocoef``,
``folder``, ``smoke``.
"""

from __future__ import annotations

from configs import common


def get_config(arg: str | None = None):
    data = common.imagenet_data("weak")
    data["augment"].update(color_jitter=0.0, randaugment_magnitude=9, randaugment_std=0.5,
                           label_smoothing=0.1)  # fmt: skip
    c = common.base(
        model={"name": "add_vit_b16", "dtype": "bfloat16"},
        objective=common.onehot_objective("add", feature_reuse=4, loss="cross_entropy"),
        data=data,
        optimizer=common.adamw(
            lr=1e-4, warmup_steps=20 * common.IMAGENET_TRAIN // 4096, weight_decay=0.3
        ),
    )
    c.batch_size = 4096
    c.num_epochs = 500.0
    c.ema_decay = 0.9999
    c.mesh = {"data": -1, "fsdp": 1}
    c.eval.batch_size = 1024
    c.eval.samplers = [
        {"name": "onehot", "to_one": "argmax", "guidance_scale": 1.0, "steps": (1, 5, 10, 20)},
        {"name": "onehot", "to_one": "argmax", "guidance_scale": 1.5, "steps": (20,)},
    ]
    return common.apply_variants(c, arg, {
        "nocoef": lambda c: c.objective.update(use_coefficient=False),
        "folder": lambda c: c.data.update(name="imagenet_folder"), "smoke": common.imagenet_smoke,
    })  # fmt: skip
