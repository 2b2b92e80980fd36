"""DiDiCM on Fashion-MNIST: a CPU-sized DiDiRN-18 (the default main job).

    python -m didiff_jax.main --config configs/fashion_mnist_didirn.py --workdir runs/fmnist_didirn

Expected (2-core CPU): see the README's results. Variants (``common.fashion_mnist_variants``):
``smoke``, ``noise=S``, ``blur=S``, ``lowres=S``, ``ratio=R``, combined with commas.
"""

from __future__ import annotations

from configs import common


def get_config(arg: str | None = None):
    c = common.base(
        model={
            "name": "didirn18",
            "stem": "reference",
            "width": 16,
            "in_channels": 1,
            "dtype": "float32",
        },  # fmt: skip
        objective={"name": "didicm", "schedule": "loglinear", "eps": 1e-3, "log_score_clip": 20.0},
        data=common.fashion_mnist_data(),
        optimizer=common.lamb(lr=3e-3, warmup_steps=200),
    )
    c.batch_size = 128
    c.num_epochs = 4.0
    c.ema_decay = 0.0  # an EMA of 0.999 lags a 1,875-step cosine run (README: results)
    # Each (sampler, steps) runs the network steps x (chains) times per test image: on the 2-core
    # CPU, 10k images x 18 evaluations take about 1.5 minutes. The study (benchmarks/) sweeps more.
    c.eval.samplers = [
        {"name": "cp", "method": "euler", "mode": "min", "steps": (2, 8)},
        {"name": "cp", "method": "analytic", "mode": "min", "steps": (8,)},
    ]
    return common.apply_variants(c, arg, common.fashion_mnist_variants())
