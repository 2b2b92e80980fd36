"""TDD captioning on MS-COCO 2017 captions (SPEC 2, "Multi-token"): a 24-token caption over the
10,112 most frequent training words (seen 5+ times), each token a Gaussian-noised one-hot vector;
a ViT-B/16-sized encoder (224 px) and a 6-layer token denoiser that attends to the image tokens.

    python -m didiff_jax.main --config configs/coco_captions_tdd.py --workdir runs/coco_tdd \\
        --config.data.root=/data/coco

``data.root`` holds ``annotations/captions_{train,val}2017.json``, ``train2017/`` and
``val2017/`` (evaluation runs on val2017). ``coco_captions_mdd.py`` is the masked-diffusion
baseline with the same network and budget. Variants: ``smoke`` (a tiny COCO-format folder given as
``data.root``, 32 px, a narrow network).
"""

from __future__ import annotations

from configs import common

SEQ_LEN = 24
MODEL = {"image_size": 224, "patch_size": 16, "in_channels": 3, "width": 768, "encoder_depth": 12,
         "depth": 6, "num_heads": 12, "seq_len": SEQ_LEN, "dtype": "bfloat16"}  # fmt: skip
STEPS = (1, 2, 4, 8, 16, 32)


def data() -> dict:
    return {
        "name": "coco_captions",
        "root": "",  # required: the COCO directory
        "image_size": 224,
        "channels": 3,
        "seq_len": SEQ_LEN,
        "vocab_size": 10112,  # words, without <pad>, <end>, <unk> (the paper's 10,112)
        "min_count": 5,
        "num_threads": 16,
        "augment": {"crop": "none", "flip": False},  # whole image, squashed to a square
        "corruption": {"kind": "", "severity": 0},
    }


def smoke(c):
    common.smoke(c)
    c.eval.corruptions = ()
    c.eval.num_trajectories = 0  # the Fashion-grid smoke runs test trajectories
    c.data.update(image_size=32, vocab_size=0, min_count=1, num_threads=1, seq_len=12)
    c.model.update(image_size=32, patch_size=8, width=32, encoder_depth=1, depth=1, num_heads=2,
                   seq_len=12, dtype="float32")  # fmt: skip
    common.smoke_samplers(c, 1)


def get_config(arg: str | None = None):
    c = common.base(
        model={"name": "caption_tdd", **MODEL},
        objective=common.onehot_objective("tdd", feature_reuse=4),
        data=data(),
        optimizer=common.adamw(lr=1e-4, warmup_steps=2000),
    )
    c.batch_size = 256
    c.num_epochs = 30.0  # over (image, caption) pairs: 591,753 per epoch
    c.ema_decay = 0.9999
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    c.eval.batch_size = 250
    c.eval.num_samples = 32
    c.eval.num_trajectories = 4
    c.eval.samplers = [common.onehot_sampler(1.0, STEPS), common.onehot_sampler(2.0, (16,))]
    return common.apply_variants(c, arg, {"smoke": smoke})
