"""ResNet-50 on ImageNet-1k: the baseline of ``imagenet_didirn50.py`` (same script, recipe and
variants; cross-entropy, soft targets with the strong recipe).

    python -m didiff_jax.main --config configs/imagenet_resnet50.py:weak --workdir gs://BUCKET/resnet50
"""

from __future__ import annotations

from configs import imagenet_didirn50


def get_config(arg: str | None = None):
    c = imagenet_didirn50.get_config(arg)
    c.model.name = "resnet50"
    c.model.stem = "imagenet"
    c.objective = {"name": "classifier"}
    c.eval.samplers = [{"name": "classifier"}]
    # [ref] train.py trains its non-diffusion baselines with label smoothing 0.1 (timm's
    # LabelSmoothingCrossEntropy; with mixup, the strong recipe, the mixed targets carry it).
    c.data.augment.label_smoothing = 0.1
    return c
