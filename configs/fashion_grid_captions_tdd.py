"""TDD captioning on the embedded Fashion-grid task (composite Fashion-MNIST images, see
``didiff_jax/data/captions.py``): every token of a 16-token caption is a Gaussian-noised one-hot
vector over the vocabulary; all tokens are decoded in parallel by argmax-and-re-noise.

    python -m didiff_jax.main --config configs/fashion_grid_captions_tdd.py --workdir runs/cap_tdd

The data set (12,000 training and 1,000 test images, 5 captions each) is generated on first use
into ``$DIDIFF_DATA_DIR`` (default ``~/.cache/didiff_jax``) unless ``data.root`` names a directory.
``fashion_grid_captions_mdd.py`` is the masked-diffusion baseline with the same network and budget.
Variants: ``smoke`` (a few steps on a tiny generated set and a tiny network).
"""

from __future__ import annotations

from configs import common

SEQ_LEN = 16
MODEL = {"image_size": 56, "patch_size": 14, "in_channels": 1, "width": 96, "encoder_depth": 3,
         "depth": 3, "num_heads": 4, "seq_len": SEQ_LEN, "dtype": "float32"}  # fmt: skip
STEPS = (1, 2, 4, 8, 16, 32)


def data() -> dict:
    return {
        "name": "fashion_grid",
        "root": "",  # '' = generated into $DIDIFF_DATA_DIR or ~/.cache/didiff_jax
        "data_dir": "",  # Fashion-MNIST IDX files ('' = $DIDIFF_FASHION_MNIST or Debian's)
        "generator_seed": 0,
        "num_train": 12000,
        "num_test": 1000,
        "refs_per_image": 5,
        "image_size": 56,
        "channels": 1,
        "seq_len": SEQ_LEN,
        "vocab_size": 0,  # 0: every word of the training captions
        "min_count": 1,
        "num_threads": 2,
        "augment": {"crop": "none", "flip": False},  # a flip would swap left and right
        "corruption": {"kind": "", "severity": 0},
    }


def smoke(c):
    common.smoke(c)
    c.eval.corruptions = ()
    c.eval.num_trajectories = 2
    c.data.update(num_train=48, num_test=16)
    c.model.update(width=32, encoder_depth=1, depth=1, num_heads=2)
    common.smoke_samplers(c, 2)


def get_config(arg: str | None = None):
    c = common.base(
        model={"name": "caption_tdd", **MODEL},
        objective=common.onehot_objective("tdd", feature_reuse=2),
        data=data(),
        optimizer=common.adamw(lr=1e-3, warmup_steps=200),
    )
    c.batch_size = 64
    c.num_steps = 3000
    c.ema_decay = 0.999
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000
    c.eval.batch_size = 250
    c.eval.num_samples = 16  # captions listed in samples/captions.json per run
    c.eval.num_trajectories = 4  # images whose reverse chain is written as text
    c.eval.samplers = [common.onehot_sampler(1.0, STEPS), common.onehot_sampler(2.0, (8,))]
    return common.apply_variants(c, arg, {"smoke": smoke})
