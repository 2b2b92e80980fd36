"""MDD captioning baseline on MS-COCO 2017: ``coco_captions_tdd.py`` with per-token masking (linear
schedule, ELBO weight 1/t) and ancestral unmasking; the same network, data, optimizer and budget.

    python -m didiff_jax.main --config configs/coco_captions_mdd.py --workdir runs/coco_mdd \\
        --config.data.root=/data/coco

Variants: ``smoke``.
"""

from __future__ import annotations

from configs import coco_captions_tdd, common


def to_mdd(c):
    c.model.name = "caption_mdd"
    c.objective = common.mdd_objective(feature_reuse=4)
    c.eval.samplers = [
        common.masked_sampler(1.0, coco_captions_tdd.STEPS),
        common.masked_sampler(2.0, (16,)),
    ]
    return c


def get_config(arg: str | None = None):
    c = to_mdd(coco_captions_tdd.get_config())
    return common.apply_variants(c, arg, {"smoke": coco_captions_tdd.smoke})
