"""The notebook API (``didiff_jax.load`` -> ``Trained``) against the main job's own code paths.

The runs are the ``:smoke`` runs of the session fixture ``smoke_run`` (tests/conftest.py), shared
with tests/test_notebook.py. The ADD run is a narrower ``:smoke`` (a 2-block ViT) to keep its train
step quick to compile. Each run is loaded once per module, so compiled samplers are shared.
"""

import functools
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import didiff_jax
from didiff_jax import api, checkpoint, inference, samplers, sharding
from didiff_jax.data import captions, fashion_mnist, pipeline
from didiff_jax.diffusion import uniform_marginal
from didiff_jax.state import restore_for_eval

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not pathlib.Path(fashion_mnist.DEBIAN_DIR).is_dir()
    and "DIDIFF_FASHION_MNIST" not in os.environ,
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)
# A narrow ADD :smoke whose 4 steps move the zero-initialised output layer (no warm-up, no EMA).
NO_WARMUP = {"optimizer.warmup_steps": 0, "optimizer.lr": 0.01, "ema_decay": 0.0}
ADD_SMALL = {"model.width": 24, "model.depth": 2, "model.num_heads": 3, "model.cond_depth": 1,
             "model.head_width": 32, "model.head_depth": 1, "optimizer.warmup_steps": 0,
             "optimizer.lr": 0.01, "ema_decay": 0.0}  # fmt: skip
DIDICM_EMA = {"ema_decay": 0.99}  # the default config keeps no EMA; these tests load one


@pytest.fixture(scope="module")
def didicm(smoke_run):
    return smoke_run("fashion_mnist_didirn", **DIDICM_EMA)


@pytest.fixture(scope="module")
def add(smoke_run):
    return smoke_run("fashion_mnist_add_vit", **ADD_SMALL)


@pytest.fixture(scope="module")
def images():
    return fashion_mnist.load("test")[0][:16]  # uint8 [16, 28, 28, 1]


@pytest.fixture(scope="module")
def trained(didicm):
    return didiff_jax.load(didicm)


@pytest.fixture(scope="module")
def trained_add(add):
    return didiff_jax.load(add)


def _write_files(tmp_path, images):
    """Two readable files (a 28 px grey PNG, a 64 px RGB JPEG) and a broken one."""
    png, jpg, bad = tmp_path / "shoe.png", tmp_path / "big.jpg", tmp_path / "broken.png"
    Image.fromarray(images[0, :, :, 0]).save(png)
    Image.fromarray(np.repeat(images[1], 3, -1)).resize((64, 64)).save(jpg)
    bad.write_bytes(b"not an image")
    return [str(png), str(bad), str(jpg)]


# ------------------------------------------------------------------------------------ loading


def test_import_is_cheap_and_exports_load():
    code = ("import sys, didiff_jax; assert 'jax' not in sys.modules, 'jax imported'; "
            "assert didiff_jax.load is didiff_jax.api.load and 'jax' in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)


def test_load_restores_the_run_with_its_ema_parameters(didicm, trained):
    saved = checkpoint.read_config(didicm)
    assert trained.config.model.to_dict() == saved.model.to_dict()
    assert (trained.step, trained.used_ema, trained.seq_len) == (4, True, None)
    assert trained.score_fn is not None and trained.logits_fn is None
    # The model holds the checkpoint's EMA parameters.
    state = restore_for_eval(saved, didicm)[1]
    ours = jax.tree.leaves(nnx.state(trained.model, nnx.Param))
    for a, b in zip(ours, jax.tree.leaves(state["ema"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_predict_mode_subprocess_equals_trained_predict_for_add(add, trained_add, images,
                                                                tmp_path):  # fmt: skip
    """``python -m didiff_jax.main --mode predict`` on an ADD run (a stochastic sampler: the keys
    must agree too) prints what ``Trained.predict`` returns."""
    paths = _write_files(tmp_path, images)
    overrides = [f"--config.{k}={v}" for k, v in ADD_SMALL.items()]
    cmd = [sys.executable, "-m", "didiff_jax.main", "--config",
           str(REPO / "configs" / "fashion_mnist_add_vit.py") + ":smoke", "--workdir", add,
           "--mode", "predict", "--images", ",".join(paths), *overrides]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr  # the broken file fails the command, the others answer
    printed = {}
    for line in out.stdout.splitlines():
        path, sep, rest = line.partition(": ")
        if sep and path in paths:
            classes = rest.split(" | ")[0]
            printed[path] = [(m[1], float(m[2])) for m in re.finditer(r"(.+?) (\d\.\d{3})(, |$)",
                                                                     classes)]  # fmt: skip
    assert "error: " in out.stdout and "broken.png" in out.stdout
    probs = trained_add.predict([api.read_image(p, 1) for p in (paths[0], paths[2])])
    assert np.ptp(probs) > 1e-3  # a trained head (the untrained one outputs uniform)
    for path, p in zip((paths[0], paths[2]), probs, strict=True):
        top = np.argsort(-p)[:5]
        assert [name for name, _ in printed[path]] == [trained_add.class_names[k] for k in top]
        np.testing.assert_allclose([v for _, v in printed[path]], p[top], atol=5e-4 + 1e-6)


def test_missing_foreign_and_mismatched_runs_fail_clearly(didicm, add, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*config\.json and checkpoints"):
        didiff_jax.load(tmp_path / "nothing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match=r"not a didiff_jax run \(no config\.json.*notes"):
        didiff_jax.load(foreign)
    shutil.copy(pathlib.Path(didicm) / "config.json", foreign / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json but no checkpoint"):
        didiff_jax.load(foreign)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 3; saved steps: \[2, 4\]"):
        didiff_jax.load(didicm, step=3)
    earlier = didiff_jax.load(didicm, step=2, use_ema=False)
    assert (earlier.step, earlier.used_ema) == (2, False)
    # Another config's network: both configs are named, with the differing parameters.
    with pytest.raises(checkpoint.CheckpointMismatch,
                       match=r"(?s)given config \(model add_vit_ti16 / objective add.*trained with "
                             r".*config\.json \(model didirn18 / objective didicm.*missing in "
                             r"checkpoint"):  # fmt: skip
        didiff_jax.load(didicm, config=str(REPO / "configs" / "fashion_mnist_add_vit.py:smoke"))
    # Another run's checkpoint under this run's config.json.
    shutil.copytree(pathlib.Path(add) / "checkpoints", foreign / "checkpoints")
    with pytest.raises(checkpoint.CheckpointMismatch,
                       match=r"(?s)does not fit the model of .*config\.json \(model didirn18.*"
                             r"copied from another run.*not in model"):  # fmt: skip
        didiff_jax.load(foreign)


# ------------------------------------------------------------------------------ preprocessing


def test_preprocess_is_the_evaluation_transform(trained, images):
    images = images[:8]
    cfg, info = trained.config.data, trained.info
    batch = next(iter(pipeline.eval_dataset(cfg, info, split="test", global_batch_size=8,
                                            max_examples=8)))  # fmt: skip
    np.testing.assert_array_equal(trained.preprocess(images), batch["image"])
    np.testing.assert_allclose(trained.preprocess(images / np.float32(255)), batch["image"],
                               atol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(trained.preprocess(images[..., 0]), batch["image"])  # B x H x W
    np.testing.assert_array_equal(trained.preprocess(images[3, :, :, 0]), batch["image"][3:4])
    pil = Image.fromarray(images[4, :, :, 0])
    np.testing.assert_array_equal(trained.preprocess(pil), batch["image"][4:5])  # a PIL image
    # RGB of another size: PIL's grey conversion, then the run's resize, as for image files.
    rgb = np.asarray(Image.fromarray(np.repeat(images[1], 3, -1)).resize((64, 64)))
    grey = np.asarray(Image.fromarray(rgb).convert("L").resize((28, 28), Image.Resampling.BILINEAR))
    want = (grey[..., None] / np.float32(255) - info.mean[0]) / info.std[0]
    mixed = trained.preprocess([rgb, images[2]])  # a list of images of different sizes
    assert mixed.shape == (2, 28, 28, 1)
    np.testing.assert_allclose(mixed[0], want, atol=1e-6)
    np.testing.assert_array_equal(mixed[1], batch["image"][2])
    with pytest.raises(ValueError, match=r"image 0: float images must be in \[0, 1\]"):
        trained.preprocess(images.astype(np.float32))
    with pytest.raises(ValueError, match="image 0: expected uint8 .* got int32"):
        trained.preprocess(images.astype(np.int32))
    with pytest.raises(ValueError, match="got shape"):
        trained.preprocess(np.zeros((1, 2, 28, 28, 1), np.uint8))


@pytest.fixture(scope="module")
def untrained_classifier(smoke_run):
    """An untrained ResNet baseline (no train step to compile): enough to check the input checks."""
    return didiff_jax.load(smoke_run("fashion_mnist_resnet", trained=False))


def test_predict_rejects_non_finite_images_naming_them(untrained_classifier, images):
    trained = untrained_classifier
    x = images[:8] / np.float32(255)
    finite = trained.predict(x)
    assert finite.shape == (8, 10) and np.isfinite(finite).all()
    bad = x.copy()
    bad[2, 5, 5, 0] = np.nan
    bad[5, 0, 0, 0] = np.inf
    message = (r"^images: 2 of 8 images have NaN or infinite pixels \(indices 2, 5\); expected "
               r"finite values in \[0, 1\] \(float\) or uint8$")  # fmt: skip
    with pytest.raises(ValueError, match=message):
        trained.predict(bad)
    with pytest.raises(ValueError, match=r"1 of 2 images .* \(indices 1\)"):  # a list, any sizes
        trained.predict([images[0], np.full((40, 40), np.nan, np.float32)])
    with pytest.raises(ValueError, match=r"1 of 1 images"):
        trained.preprocess(np.float64(-np.inf) * np.ones((28, 28)))
    np.testing.assert_array_equal(trained.predict(images[:8]), trained.predict(images[:8]))
    for name, value in (("num_steps", 0), ("batch_size", -1)):
        with pytest.raises(ValueError, match=rf"^{name}={value}: expected an integer >= 1"):
            trained.predict(images[:2], **{name: value})


# ----------------------------------------------------------------------- the functional samplers


def test_samplers_take_the_network_as_written_without_retracing(trained, images):
    images = images[:8]
    sample = jax.jit(functools.partial(samplers.cp_sample, trained.score_fn, num_classes=10,
                                       num_steps=2, schedule=trained.schedule))  # fmt: skip
    first = sample(trained.preprocess(images), jax.random.key(1))
    again = sample(trained.preprocess(images[::-1]), jax.random.key(2))
    assert sample._cache_size() == 1  # new images and keys: one trace
    np.testing.assert_allclose(first, trained.predict(images, sampler="cp", num_steps=2), atol=1e-5)
    np.testing.assert_allclose(again, first[::-1], atol=1e-5)  # CP at argmin p: per example
    assert np.ptp(np.asarray(first)) > 1e-3  # not the uniform start
    # CL through predict: histograms of num_chains chains.
    cl = trained.predict(images[:2], sampler={"name": "cl", "num_chains": 5}, num_steps=2)
    np.testing.assert_allclose(cl * 5, np.round(cl * 5), atol=1e-5)
    np.testing.assert_allclose(cl.sum(-1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"sampler 'onehot' does not fit a 'didicm' run"):
        trained.predict(images, sampler="onehot")


def test_add_run_predict_equals_the_onehot_sampler_on_its_functions(trained_add, images):
    trained = trained_add
    assert trained.score_fn is None and trained.objective == "add"
    key = jax.random.key(3)
    batch_sharding = sharding.batch_sharding(trained.mesh)

    @functools.partial(jax.jit, static_argnames="g")
    def direct(x, key, g):
        null = trained.null_condition(x.shape[0]) if g != 1.0 else None
        return samplers.onehot_sample(trained.logits_fn, trained.encode(x), key, num_classes=10,
                                      num_steps=2, schedule=trained.schedule, guidance_scale=g,
                                      null_cond=null, return_trajectory=True)  # fmt: skip

    x = [jax.device_put(trained.preprocess(images[i : i + 8]), batch_sharding) for i in (0, 8)]
    entry = {"name": "onehot", "guidance_scale": 2.0}  # classifier-free guided: all 3 functions
    probs, traj = trained.predict(images[:8], sampler=entry, key=key, return_trajectory=True)
    want, want_traj = direct(x[0], jax.random.fold_in(key, 0), 2.0)
    assert probs.shape == (8, 10) and traj.shape == (2, 8, 10)
    np.testing.assert_allclose(probs, want, atol=1e-5)
    np.testing.assert_allclose(traj, want_traj, atol=1e-5)
    # 16 images in chunks of 8: chunk c draws with fold_in(key, c).
    both = trained.predict(images, sampler=entry, key=key, batch_size=8)
    for c in (0, 1):
        want = direct(x[c], jax.random.fold_in(key, c), 2.0)[0]
        np.testing.assert_allclose(both[8 * c : 8 * c + 8], want, atol=1e-5)


def test_an_own_nnx_module_plugs_in_through_bind():
    class Oracle(nnx.Module):
        """Knows each image's posterior: ``images`` index a table of log-posteriors."""

        def __init__(self, table):
            self.table = nnx.Param(table)

        def __call__(self, images, x_t, sigma, *, train):
            log_p = jnp.log(uniform_marginal(jax.nn.softmax(self.table[images]), sigma))
            return log_p - jnp.take_along_axis(log_p, x_t[:, None], axis=-1)

    @jax.jit
    def sample(score_fn, images, key):  # the network function is an argument (a pytree)
        return samplers.cp_sample(score_fn, images, key, num_classes=10, num_steps=4,
                                  method="analytic")  # fmt: skip

    tables = jax.random.normal(jax.random.key(0), (2, 4, 10)) * 3
    for table in tables:  # new parameters of the same shape: a new posterior, no retrace
        probs = sample(api.bind(Oracle(table)), jnp.arange(4), jax.random.key(1))
        np.testing.assert_allclose(probs, jax.nn.softmax(table), atol=1e-3)
    assert sample._cache_size() == 1
    with pytest.raises(TypeError, match="bind\\(\\) takes an nnx.Module"):
        api.bind(lambda images, x_t, sigma: images)


# ------------------------------------------------------------------------------------ captions


@pytest.fixture(scope="module")
def grid_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("grid") / "set")  # generated on first use (48 / 16 images)


@pytest.mark.slow  # about 35 s of CPU for the pair
@pytest.mark.parametrize(
    "config_file,trained_run",
    [("fashion_grid_captions_mdd", False), ("fashion_grid_captions_tdd", True)],
)
def test_caption_run_predicts_per_token_probabilities_as_its_evaluation_samples(
    smoke_run, grid_root, config_file, trained_run
):
    """MDD: an untrained run (its draws are random even from uniform logits); TDD: a trained
    one (argmax of uniform logits would be trivially equal)."""
    overrides = {"data.root": grid_root, **(NO_WARMUP if trained_run else {})}
    trained = didiff_jax.load(smoke_run(config_file, trained=trained_run, **overrides))
    N, V = trained.seq_len, trained.num_classes
    assert N == 16 and trained.logits_fn is not None and trained.score_fn is None
    source = pipeline.load_source(trained.config.data, "test")
    images = np.stack([source[i]["image"] for i in range(8)])  # uint8 [8, 56, 56, 1]
    key = jax.random.key(5)
    probs, traj = trained.predict(images, key=key, return_trajectory=True)
    assert probs.shape == (8, N, V) and traj.shape == (2, 8, N, V)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # The caption evaluation's predictor draws the same tokens from the same key, and
    # ``caption`` decodes them.
    graphdef, params, rest = nnx.split(trained.model, nnx.Param, ...)
    fn = inference.make_predict_fn(
        trained.config, graphdef, trained.sampler_entry(), 2, V, seq_len=N
    )
    sample = inference.jit_outputs(fn, "answer", "traj")
    x = jax.device_put(trained.preprocess(images), sharding.batch_sharding(trained.mesh))
    tokens, traj_onehot = sample(params, rest, x, jax.random.fold_in(key, 0))
    traj_tokens = inference.decoded_tokens(traj_onehot, V)
    tokenizer = captions.tokenizer_for(trained.config.data)
    assert trained.caption(images, key=key) == [tokenizer.decode(t) for t in np.asarray(tokens)]
    if trained.objective == "mdd":  # one-hot rows of the revealed tokens, all-zero while masked
        decoded = np.where(traj.sum(-1) > 0, traj.argmax(-1), V)
        np.testing.assert_array_equal(decoded, traj_tokens)
        assert 0 < (decoded[0] == V).mean() < 1  # half-way, part of the caption is revealed
    else:
        assert np.ptp(probs) > 1e-3
        np.testing.assert_array_equal(probs.argmax(-1), tokens)
        np.testing.assert_array_equal(traj.argmax(-1), traj_tokens)
