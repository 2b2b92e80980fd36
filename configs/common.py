"""Shared pieces of the configs (helpers only; every config file is complete on its own)."""

from __future__ import annotations

import ml_collections

from didiff_jax.data import corruptions_c


def base(model: dict, objective: dict, data: dict, optimizer: dict) -> ml_collections.ConfigDict:
    """The fields every run has, with the given model / objective / data / optimizer."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 128  # global, over all devices and processes
    c.num_epochs = 1.0
    c.num_steps = 0  # > 0 overrides num_epochs
    c.model = model
    c.objective = objective
    c.data = data
    c.optimizer = optimizer
    c.ema_decay = 0.0  # > 0 keeps an EMA of the parameters and evaluates with it
    c.mesh = {"data": -1, "fsdp": 1}
    c.sharding_rules = ()  # ((regex, (axis or None, ...)), ...); default replicated
    c.log_every_steps = 50
    c.tensorboard = False  # True: also TensorBoard event files in <workdir>/tensorboard
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 2
    c.eval = ml_collections.ConfigDict({
        "after_train": True,
        "batch_size": 500,
        "samplers": [],
        "corruptions": (),  # e.g. ("gaussian_noise",): swept at eval.severities on the test set
        "severities": (1, 3, 5),
        "use_ema": True,
        # run dirs of trained baselines, evaluated alongside into one file:
        "baselines": ml_collections.config_dict.placeholder(tuple),
        "max_examples": 0,  # 0: the whole test split
        "clean": True,  # False: only the corrupted conditions (benchmarks/robustness.py)
    })  # fmt: skip
    return c


def fashion_mnist_data(**overrides) -> dict:
    data = {
        "name": "fashion_mnist",
        "data_dir": "",  # '' = $DIDIFF_FASHION_MNIST or /usr/share/datasets/fashion-mnist
        "image_size": 28,
        "train_ratio": 1.0,
        "ratio_seed": 0,
        "holdout": 0,  # the last N training examples are never trained on (:uncertainty: 5000)
        "classes": (),  # (): all 10; else the kept classes, relabelled 0.. (:heldout)
        "num_threads": 2,
        "augment": {
            "crop": "pad",
            "pad": 2,
            "flip": True,
            "color_jitter": 0.0,
            "randaugment_magnitude": 0,
            "mixup": 0.0,
            "cutmix": 0.0,
            "label_smoothing": 0.0,
        },  # fmt: skip
        "corruption": {"kind": "", "severity": 0},  # the observation y = h(x), train and test
    }
    data.update(overrides)
    return data


def lamb(lr: float, warmup_steps: int, weight_decay: float = 0.01) -> dict:
    """timm LAMB as the reference uses it (SPEC 1.6)."""
    return {"name": "lamb", "lr": lr, "warmup_steps": warmup_steps, "weight_decay": weight_decay,
            "grad_clip": 1.0, "b1": 0.9, "b2": 0.999, "eps": 1e-6}  # fmt: skip


def adamw(lr: float, warmup_steps: int, weight_decay: float = 0.05) -> dict:
    """AdamW as the ADD recipe uses it (SPEC 2): decoupled weight decay, global grad-norm clip 3.0."""
    return {"name": "adamw", "lr": lr, "warmup_steps": warmup_steps, "weight_decay": weight_decay,
            "grad_clip": 3.0}  # fmt: skip


def onehot_objective(name: str, feature_reuse: int, **extra) -> dict:
    """ADD (``name="add"``, one label) or TDD (``"tdd"``, a token sequence): Gaussian diffusion of
    one-hot vectors, cosine schedule in continuous time, condition dropout 0.1 for classifier-free
    guidance, the abar coefficient on the cross-entropy; ``extra`` keys follow (ADD: ``loss``)."""
    return {"name": name, "schedule": "cosine", "num_timesteps": 0, "feature_reuse": feature_reuse,
            "cond_drop_prob": 0.1, "use_coefficient": True, "lambda_hot": 1.0, **extra}  # fmt: skip


def mdd_objective(feature_reuse: int) -> dict:
    """The masked-diffusion baseline of ADD/TDD: linear mask schedule, condition dropout 0.1."""
    return {"name": "mdd", "schedule": "linear", "feature_reuse": feature_reuse,
            "cond_drop_prob": 0.1}  # fmt: skip


def onehot_sampler(guidance_scale: float, steps: tuple, to_one: str = "argmax") -> dict:
    """An ``eval.samplers`` entry: the ADD/TDD one-hot chain at each number of ``steps``."""
    return {"name": "onehot", "to_one": to_one, "guidance_scale": guidance_scale, "steps": steps}


def masked_sampler(guidance_scale: float, steps: tuple) -> dict:
    """An ``eval.samplers`` entry: MDD's ancestral unmasking at each number of ``steps``."""
    return {"name": "masked", "guidance_scale": guidance_scale, "steps": steps}


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few steps on a few examples: what the tests run for every config."""
    c.num_steps = 4
    c.batch_size = 16
    c.log_every_steps = 2
    c.checkpoint_every_steps = 2
    c.eval.batch_size = 16
    c.eval.max_examples = 32
    c.eval.corruptions = ("gaussian_noise",)
    c.eval.severities = (3,)
    if c.eval.get("uncertainty"):  # every corruption, severity and OOD set, on a few images
        c.eval.uncertainty.update(max_examples=16, num_samples=2)
        c.data.holdout = 32
    for s in c.eval.samplers:
        if "steps" in s:
            s["steps"] = (1, 2)
    return c


def smoke_samplers(c: ml_collections.ConfigDict, n: int) -> None:
    """Keep the first ``n`` of ``c.eval.samplers``, each at 2 steps where it takes steps: the
    smoke variants that evaluate only what their network's code paths need."""
    c.eval.samplers = [
        {**s, **({"steps": (2,)} if "steps" in s else {})} for s in c.eval.samplers[:n]
    ]


IMAGENET_TRAIN = 1_281_167  # ImageNet-1k training images: epochs -> steps


def imagenet_data(aug: str = "weak", **overrides) -> dict:
    """ImageNet-1k: TFDS ``imagenet2012`` (ArrayRecord) or a ``train/<wnid>``, ``val/<wnid>`` folder
    (``name="imagenet_folder"``, ``root=...``). ``aug``: the reference's weak or strong recipe."""
    data = {
        "name": "imagenet_tfds",
        "data_dir": "",
        "root": "",
        "image_size": 224,
        "train_ratio": 1.0,
        "ratio_seed": 0,
        "num_threads": 16,
        "augment": {
            "crop": "rrc",
            "rrc_scale": (0.08, 1.0),
            "flip": True,
            "color_jitter": 0.4,
            "randaugment_magnitude": 0,
            "mixup": 0.0,
            "cutmix": 0.0,
            "label_smoothing": 0.0,
        },  # fmt: skip
        "corruption": {"kind": "", "severity": 0},
    }
    if aug == "strong":  # "ResNet strikes back" (SPEC 1.6): soft labels select the soft loss
        data["augment"].update(color_jitter=0.0, randaugment_magnitude=7, randaugment_std=0.5,
                               mixup=0.2, cutmix=1.0, label_smoothing=0.1)  # fmt: skip
    data.update(overrides)
    return data


def imagenet_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ImageNet configs' smoke variant: a tiny image folder (``data.root`` must be set, e.g.
    by the tests), 32 px, a narrow network."""
    smoke(c)
    smoke_samplers(c, 1)
    c.data.name = "imagenet_folder"
    c.data.image_size = 32
    c.data.num_threads = 1
    name = c.model.name
    if "resnet" in name or "didirn" in name:
        c.model.width = 8
    else:  # the ViTs: a 2-layer, width-24 encoder on 8 px patches
        c.model.update(image_size=32, patch_size=8, width=24, depth=2, num_heads=3)
        if name.startswith("add_"):
            c.model.update(head_width=32, head_depth=1, cond_depth=1)
    return c


def apply_variants(
    c: ml_collections.ConfigDict, arg: str | None, variants: dict
) -> ml_collections.ConfigDict:
    """Apply comma-separated variants: ``name`` or ``name=value`` (e.g. ``strong,ratio=0.1``)."""
    items = [i for i in (arg or "").split(",") if i]
    items.sort(key=lambda i: i == "smoke")  # smoke last: it shrinks what the others set
    for item in items:
        name, _, value = item.partition("=")
        if name not in variants:
            raise ValueError(f"unknown variant {name!r}; known: {', '.join(sorted(variants))}")
        variants[name](c, value) if value else variants[name](c)
    return c


def no_augmentation(data: dict) -> dict:
    """``data`` without the random crop and flip. On a budget of a few epochs augmentation only
    slows learning (measured on Fashion-MNIST after 1 epoch: DiDiRN-18 79.5% with crop and flip,
    85.3% without; ResNet-18 86.8% and 88.7%; README: the default recipe); longer runs want it."""
    data["augment"] = {**data["augment"], "crop": "none", "flip": False}
    return data


def uncertainty(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The uncertainty benchmark after the evaluation (``didiff_jax/uncertainty_eval.py``):
    Fashion-MNIST-C (15 corruptions x 5 severities), OOD detection on synthetic sets, selective
    prediction, calibration before and after a temperature fitted on 5,000 held-out training
    images (not trained on), CARD's paired test from 8 draws; on the first 1,000 test images.
    Needs the ``corruptions`` extra. Name the paired baseline's run in ``eval.baselines`` for mCE."""
    c.data.holdout = 5000
    c.eval.uncertainty = {
        "max_examples": 1000,
        "num_samples": 8,
        "seed": 0,
        "sampler": "",  # "": the run's default (the first of eval.samplers)
        "corruptions": corruptions_c.CORRUPTIONS_C,
        "severities": (1, 2, 3, 4, 5),
        "ood": ("noise", "inverted", "flipped"),
        "cache_dir": "",  # "": ~/.cache/didiff_jax/corruptions_c
    }
    return c


HELDOUT_CLASSES = (0, 1, 2, 3, 4)
"""The classes the ``heldout`` variant trains on (T-shirt/top, trouser, pullover, dress, coat);
sandal, shirt, sneaker, bag and ankle boot are then out of distribution."""


def heldout(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Train and test on ``HELDOUT_CLASSES`` only; with ``uncertainty``, the other five classes'
    test images are one more OOD set (``heldout``)."""
    c.data.classes = HELDOUT_CLASSES
    return c


def fashion_mnist_variants(**extra) -> dict:
    """The Fashion-MNIST configs' variants: ``smoke``, ``noise=S`` (Gaussian noise of severity S on
    train and test images), ``blur=S``, ``lowres=S`` (downsample-then-upsample), ``ratio=R``
    (keep a fraction R of the training data per class), ``uncertainty`` (the uncertainty
    benchmark), ``heldout`` (train on five classes; the others are OOD), plus the config's own."""

    def corruption(kind):
        return lambda c, s: c.data.corruption.update(kind=kind, severity=int(s))

    return {
        "smoke": smoke,
        "noise": corruption("gaussian_noise"),
        "blur": corruption("gaussian_blur"),
        "lowres": corruption("downsample"),
        "ratio": lambda c, r: c.data.update(train_ratio=float(r)),
        "uncertainty": uncertainty,
        "heldout": heldout,
        **extra,
    }
