"""MDD captioning baseline on the Fashion-grid task: ``fashion_grid_captions_tdd.py`` with per-token
masking (linear schedule, ELBO weight 1/t) and ancestral unmasking; the same network (int tokens
in, an extra mask embedding), data, optimizer and number of steps.

    python -m didiff_jax.main --config configs/fashion_grid_captions_mdd.py --workdir runs/cap_mdd

Variants: ``smoke``.
"""

from __future__ import annotations

from configs import common, fashion_grid_captions_tdd


def to_mdd(c):
    c.model.name = "caption_mdd"
    c.objective = common.mdd_objective(feature_reuse=2)
    c.eval.samplers = [
        common.masked_sampler(1.0, fashion_grid_captions_tdd.STEPS),
        common.masked_sampler(2.0, (8,)),
    ]
    return c


def get_config(arg: str | None = None):
    c = to_mdd(fashion_grid_captions_tdd.get_config())
    return common.apply_variants(c, arg, {"smoke": fashion_grid_captions_tdd.smoke})
