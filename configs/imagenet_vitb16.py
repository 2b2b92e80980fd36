"""ViT-B/16 on ImageNet-1k with a linear head: the baseline of ``imagenet_add_vitb16.py`` (same
recipe; the paper's 82.3 top-1).

    python -m didiff_jax.main --config configs/imagenet_vitb16.py --workdir gs://BUCKET/vitb16
"""

from __future__ import annotations

from configs import imagenet_add_vitb16


def get_config(arg: str | None = None):
    c = imagenet_add_vitb16.get_config(arg)
    c.model = {
        k: v for k, v in c.model.items() if k not in ("head_width", "head_depth", "cond_depth")
    }
    c.model.name = "vit_b16"
    c.objective = {"name": "classifier"}
    c.eval.samplers = [{"name": "classifier"}]
    return c
