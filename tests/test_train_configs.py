"""The other configs end to end on tiny settings: the baselines and ADD-ViT on Fashion-MNIST, and
the ImageNet configs on a small image folder (train, resume, evaluate). Apart from test_train.py so
that ``pytest --dist loadfile`` can put them on another worker."""

import importlib
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from configs import fashion_mnist_add_vit, fashion_mnist_resnet, fashion_mnist_vit
from didiff_jax import evaluate, inference, main
from didiff_jax.data import fashion_mnist
from didiff_jax.state import build_model

pytestmark = pytest.mark.skipif(
    not pathlib.Path(fashion_mnist.DEBIAN_DIR).is_dir()
    and "DIDIFF_FASHION_MNIST" not in os.environ,
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)


@pytest.mark.parametrize(
    "module,variant,sampler",
    [
        (fashion_mnist_resnet, "smoke", "classifier"),
        (fashion_mnist_vit, "smoke", "classifier"),
        (fashion_mnist_add_vit, "smoke", "onehot-argmax-g2"),
        # The masked baseline's sampler and training run in test_captions' MDD configs.
        pytest.param(fashion_mnist_add_vit, "smoke,mdd", "masked", marks=pytest.mark.slow),
    ],
)
def test_other_configs_train_resume_and_evaluate(tmp_path, module, variant, sampler, monkeypatch,
                                                capsys):  # fmt: skip
    monkeypatch.setattr(evaluate, "PROGRESS_EVERY_S", 0.0)  # a progress line at every batch
    config = module.get_config(variant)
    if "resnet" in config.model.name:
        config.model.width = 8
    else:  # two narrow blocks: the same code paths as four, compiled in about half the time
        config.model.update(width=24, depth=2)
        if "head_width" in config.model:
            config.model.update(head_width=32, head_depth=1)
    config.eval.after_train = False
    main.train_and_evaluate(config, str(tmp_path))
    config.num_steps = 6
    main.train_and_evaluate(config, str(tmp_path))  # resumes at 4
    capsys.readouterr()
    records = evaluate.evaluate(config, str(tmp_path))
    assert sampler in {r["sampler"] for r in records}
    assert all(0.0 <= r["top1"] <= 1.0 and np.isfinite(r["nll"]) for r in records)
    # ADD's calibration is read at t = 1, not from the chain's last (copying) step.
    assert {r["readout"] for r in records} == {"t=1" if sampler.startswith("onehot") else "final"}
    out = capsys.readouterr().out  # 32 test images in batches of 16: 2 per condition
    assert "clean severity 0: batch 1/2 | ETA" in out
    assert "gaussian_noise severity 3: batch 1/2 | ETA" in out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A tiny ImageNet-style folder of real JPEG/PNG files: 3 classes x 6 train / 2 val images."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c, wnid in enumerate(("n01", "n02", "n03")):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8) // (c + 1)
                Image.fromarray(pixels).save(d / (f"{i}.JPEG" if i % 2 else f"{i}.png"))
    return root


@pytest.mark.parametrize(
    "name",
    [
        "imagenet_add_vitb16",
        # DiDiRN-50 shares this image-folder path with the run above and is checked by shape
        # (test_models_resnet) and against the official network (test_torch_interop); the
        # baselines derive from the two diffusion configs and share the code paths of the
        # Fashion-MNIST baselines: all three kept out of the default run for time.
        pytest.param("imagenet_didirn50", marks=pytest.mark.slow),
        pytest.param("imagenet_resnet50", marks=pytest.mark.slow),
        pytest.param("imagenet_vitb16", marks=pytest.mark.slow),
    ],
)
def test_imagenet_configs_smoke_on_an_image_folder(tmp_path, image_folder, name):
    config = importlib.import_module(f"configs.{name}").get_config("smoke")
    config.data.root = str(image_folder)
    config.data.data_dir = str(image_folder.parent / "prepared")  # prepared once, shared
    config.eval.after_train = False
    config.eval.corruptions = ()
    main.train_and_evaluate(config, str(tmp_path / "run"))
    config.num_steps = 6
    main.train_and_evaluate(config, str(tmp_path / "run"))
    records = evaluate.evaluate(config, str(tmp_path / "run"))
    assert records and all(r["count"] == 6 for r in records)


def test_single_label_mdd_is_evaluated_with_its_training_schedule():
    """The evaluator's masked sampler uses the objective's mask schedule (here cosine), as
    captioning and the API do, not the sampler's default (linear)."""
    import jax
    import ml_collections
    from flax import nnx

    from didiff_jax import samplers
    from didiff_jax.data import pipeline
    from didiff_jax.diffusion import MaskCosine, MaskLinear

    config = fashion_mnist_add_vit.get_config("smoke,mdd")
    config.objective.schedule = "cosine"
    info = pipeline.dataset_info(config.data)
    model = build_model(config, info, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    entry = ml_collections.ConfigDict({"name": "masked"})
    images = jax.random.normal(jax.random.key(1), (64, *info.image_shape))
    key = jax.random.key(2)
    revealed = inference.make_predict_fn(config, graphdef, entry, 3, info.num_classes)(
        params, rest, images, key
    )["traj"]

    def direct(schedule):
        c = model.encode(images, train=False)
        fn = lambda x, t, cond: model.denoise(jax.nn.one_hot(x, 10), t, cond, train=False)  # noqa: E731
        traj = samplers.masked_sample(fn, c, key, num_classes=10, num_steps=3, schedule=schedule,
                                      return_trajectory=True)[2]  # fmt: skip
        return np.asarray(jax.nn.one_hot(traj, 10))  # [S, B, K], the mask: an all-zero row

    # Which step reveals each label depends on the schedule (same key, same network).
    np.testing.assert_array_equal(np.asarray(revealed), direct(MaskCosine()))
    assert not np.array_equal(np.asarray(revealed), direct(MaskLinear()))


@pytest.mark.parametrize("variant", ["weak", "strong"])
def test_imagenet_baseline_smooths_labels_as_the_official_script(variant):
    """[ref] train.py: the ResNet baseline's cross-entropy has label smoothing 0.1 in both recipes
    (with mixup, through the mixed targets); the diffusion model's loss has none of its own."""
    resnet = importlib.import_module("configs.imagenet_resnet50").get_config(variant)
    didirn = importlib.import_module("configs.imagenet_didirn50").get_config(variant)
    assert resnet.data.augment.label_smoothing == 0.1
    assert didirn.data.augment.label_smoothing == (0.1 if variant == "strong" else 0.0)
    assert didirn.objective.log_score_clip == 0.0  # [ref]: no clamp on the hard-label loss


def test_calibration_readout_of_the_one_hot_chain_is_its_first_step():
    rng = np.random.default_rng(0)
    traj = rng.dirichlet(np.ones(10), size=(5, 4))  # [S, B, K]
    final = np.eye(10)[[1, 2, 3, 4]]  # a confident last step
    got, name = inference.calibration_readout("onehot-argmax-g2", final, traj)
    assert name == "t=1" and np.array_equal(got, traj[0])
    for label in ("cp-euler", "cl-euler", "masked", "classifier"):
        got, name = inference.calibration_readout(label, final, traj)
        assert name == "final" and got is final


# Every config and the variants its docstring names (a value where the variant takes one).
CONFIG_VARIANTS = {
    "coco_captions_mdd": ["smoke"],
    "coco_captions_tdd": ["smoke"],
    "fashion_grid_captions_mdd": ["smoke"],
    "fashion_grid_captions_tdd": ["smoke"],
    "fashion_mnist_add_vit": ["smoke", "noise=3", "blur=2", "lowres=4", "ratio=0.1", "mdd",
                              "nocoef", "regression", "mdd,noise=3,smoke"],
    "fashion_mnist_didirn": ["smoke", "noise=3", "blur=2", "lowres=4", "ratio=0.1", "reference",
                             "reference,smoke"],
    "fashion_mnist_resnet": ["smoke", "noise=3", "blur=2", "lowres=4", "ratio=0.1", "reference"],
    "fashion_mnist_vit": ["smoke", "noise=3", "blur=2", "lowres=4", "ratio=0.1"],
    "imagenet_add_vitb16": ["nocoef", "folder", "smoke"],
    "imagenet_didirn50": ["weak", "strong", "ratio=0.1", "res=64", "folder", "smoke",
                          "strong,res=64,smoke"],
    "imagenet_resnet50": ["weak", "strong", "ratio=0.1", "res=64", "folder", "smoke"],
    "imagenet_vitb16": ["nocoef", "folder", "smoke"],
}  # fmt: skip


def test_every_config_is_listed():
    on_disk = {p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")}
    assert on_disk - {"__init__", "common"} == set(CONFIG_VARIANTS)


@pytest.mark.parametrize("name", sorted(CONFIG_VARIANTS))
def test_every_config_and_variant_builds(name):
    """``get_config(arg)`` for the default and each variant; an unknown variant is an error."""
    module = importlib.import_module(f"configs.{name}")
    for arg in [None, *CONFIG_VARIANTS[name]]:
        config = module.get_config(arg)
        assert config.model.name and config.objective.name and config.optimizer.name
        assert config.eval.samplers and all("name" in s for s in config.eval.samplers)
    with pytest.raises(ValueError, match="unknown variant 'bogus'"):
        module.get_config("bogus")


def test_add_recipe_from_the_shared_helpers():
    """The ImageNet ADD recipe (SPEC 2) as written out, and its ViT baseline on the same one."""
    add = importlib.import_module("configs.imagenet_add_vitb16").get_config()
    vit = importlib.import_module("configs.imagenet_vitb16").get_config()
    recipe = {"name": "adamw", "lr": 1e-4, "warmup_steps": 6255, "weight_decay": 0.3,
              "grad_clip": 3.0}  # fmt: skip
    assert add.optimizer.to_dict() == vit.optimizer.to_dict() == recipe
    assert add.objective.to_dict() == {
        "name": "add", "schedule": "cosine", "num_timesteps": 0, "feature_reuse": 4,
        "cond_drop_prob": 0.1, "use_coefficient": True, "lambda_hot": 1.0, "loss": "cross_entropy",
    }  # fmt: skip
