"""DiDiRN-50 on ImageNet-1k, the reference recipe (SPEC 1.6): LAMB, 600 epochs, batch 1024 (weak)
or 2048 (strong), cosine with 5 warmup epochs.

    python -m didiff_jax.main --config configs/imagenet_didirn50.py:weak --workdir gs://BUCKET/didirn50
    python -m didiff_jax.main --config configs/imagenet_didirn50.py:strong,res=64 --workdir ...
    python -m didiff_jax.main --config configs/imagenet_didirn50.py:weak,ratio=0.1 --workdir ...

Expected (the paper, 8 GPUs): DiDiRN-50 beats ResNet-50 top-1 and top-5 in every setting. Cost:
about 16 GFLOPs per image forward at 224 px (3.9x ResNet-50); not measured here (no GPU).
Variants: ``weak`` (default), ``strong``, ``ratio=R`` (training-data ratio; lr x sqrt(1/R)),
``res=N`` (train and test at N px), ``folder`` (an image folder: set --config.data.root), ``smoke``.
"""

from __future__ import annotations

import math

from configs import common


def get_config(arg: str | None = None):
    c = common.base(
        model={
            "name": "didirn50",
            "stem": "reference",
            "width": 64,
            "in_channels": 3,
            "dtype": "bfloat16",
        },  # fmt: skip
        objective={"name": "didicm", "schedule": "loglinear", "eps": 1e-3, "log_score_clip": 0.0},
        data=common.imagenet_data("weak"),
        optimizer=common.lamb(lr=2e-3, warmup_steps=5 * common.IMAGENET_TRAIN // 1024),
    )
    c.batch_size = 1024
    c.num_epochs = 600.0
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    c.eval.batch_size = 1024
    c.eval.samplers = [
        {"name": "cp", "method": "euler", "mode": "min", "steps": (1, 2, 4, 8)},
        {"name": "cp", "method": "analytic", "mode": "min", "steps": (8,)},
    ]
    c.eval.corruptions = ("gaussian_noise", "gaussian_blur", "downsample")

    def strong(c):
        c.data = common.imagenet_data("strong", name=c.data.name, root=c.data.root,
                                      data_dir=c.data.data_dir)  # fmt: skip
        c.batch_size = 2048
        c.optimizer.lr = 3.5e-3
        c.optimizer.warmup_steps = 5 * common.IMAGENET_TRAIN // 2048

    def ratio(c, r):
        c.data.train_ratio = float(r)
        c.optimizer.lr *= math.sqrt(1.0 / float(r))

    def res(c, n):
        c.data.image_size = int(n)

    return common.apply_variants(c, arg, {
        "weak": lambda c: None, "strong": strong, "ratio": ratio, "res": res,
        "folder": lambda c: c.data.update(name="imagenet_folder"), "smoke": common.imagenet_smoke,
    })  # fmt: skip
