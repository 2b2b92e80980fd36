"""The standard-classifier baseline of ``fashion_mnist_didirn.py``: same ResNet-18 body, stem,
width, data, optimizer and budget, cross-entropy.

    python -m didiff_jax.main --config configs/fashion_mnist_resnet.py --workdir runs/fmnist_resnet

Expected: 92.12% top-1 after 7 epochs (README: results, measured on a shared 2-core AMD EPYC).
"""

from __future__ import annotations

from configs import common


def get_config(arg: str | None = None):
    c = common.base(
        model={
            "name": "resnet18",
            "stem": "reference",
            "width": 16,
            "in_channels": 1,
            "dtype": "float32",
        },  # fmt: skip
        objective={"name": "classifier"},
        data=common.no_augmentation(common.fashion_mnist_data()),
        optimizer=common.lamb(lr=3e-3, warmup_steps=200),
    )
    c.num_epochs = 7.0
    c.ema_decay = 0.0  # an EMA of 0.999 lags a short cosine run (README: results)
    c.eval.samplers = [{"name": "classifier"}]

    def reference(c):  # the baseline of fashion_mnist_didirn.py:reference
        c.data.augment.update(crop="pad", flip=True)
        c.num_epochs = 4.0

    return common.apply_variants(c, arg, common.fashion_mnist_variants(reference=reference))
