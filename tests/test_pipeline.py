"""Input pipelines on a small in-memory source: subsets, determinism, resumable state, padding."""

import io
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import common
from didiff_jax.checks import InputError
from didiff_jax.data import fashion_mnist, pipeline

needs_data = pytest.mark.skipif(
    not pathlib.Path(fashion_mnist.DEBIAN_DIR).is_dir(),
    reason="dataset-fashion-mnist not installed",
)


def make_source(n=60, k=3, size=28):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    labels = (np.arange(n) % k).astype(np.int32)
    return pipeline.ArraySource(images, labels)


NO_AUGMENT = {"crop": "none", "flip": False}  # the Fashion-MNIST configs' default


def data_config(**augment):
    cfg = ml_collections.ConfigDict(common.fashion_mnist_data())
    cfg.augment.update(augment)
    cfg.num_threads = 1
    return cfg


def test_class_subset_keeps_ratio_per_class():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    idx = pipeline.class_subset(labels, 0.1, seed=3)
    assert np.bincount(labels[idx]).tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(idx, pipeline.class_subset(labels, 0.1, seed=3))
    assert not np.array_equal(idx, pipeline.class_subset(labels, 0.5, seed=4)[: len(idx)])


def test_holdout_examples_are_never_trained_on():
    """``data.holdout``: the last N train examples are apart (the temperature of the uncertainty
    evaluation is fitted on them); ``train_ratio`` then subsets the rest."""
    cfg = data_config()
    src = make_source(n=60)
    assert pipeline.training_indices(cfg, src) is None
    cfg.holdout = 12
    np.testing.assert_array_equal(pipeline.training_indices(cfg, src), np.arange(48))
    np.testing.assert_array_equal(pipeline.holdout_indices(cfg, src), np.arange(48, 60))
    info = pipeline.dataset_info(cfg)
    # Image i is filled with the value i, so a batch tells which examples it holds.
    marked = pipeline.ArraySource(np.tile(np.arange(60, dtype=np.uint8)[:, None, None, None],
                                          (1, 28, 28, 1)), src.labels)  # fmt: skip
    stream = iter(pipeline.train_dataset(cfg, info, global_batch_size=8, seed=1, source=marked))
    mean, std = np.asarray(info.mean), np.asarray(info.std)
    pixels = np.concatenate([next(stream)["image"][:, 14, 14, 0] for _ in range(30)])  # [240]
    seen = set(np.rint((pixels * std[0] + mean[0]) * 255).astype(int).tolist())
    assert seen == set(range(48))  # 240 draws over 5 epochs of 48: every kept one, no held one
    cfg.train_ratio = 0.5
    kept = pipeline.training_indices(cfg, src)
    assert len(kept) == 24 and kept.max() < 48
    with pytest.raises(InputError, match="data.holdout=60"):
        cfg.holdout = 60
        pipeline.training_indices(cfg, src)


def test_train_stream_is_deterministic_and_resumable():
    cfg = data_config()
    info = pipeline.dataset_info(cfg)
    src = make_source()

    def stream():
        return iter(pipeline.train_dataset(cfg, info, global_batch_size=8, seed=1, source=src))

    a, b = stream(), stream()
    first = [next(a) for _ in range(3)]
    for x in first:
        y = next(b)
        np.testing.assert_array_equal(x["image"], y["image"])
    assert first[0]["image"].shape == (8, 28, 28, 1) and first[0]["image"].dtype == np.float32
    state = a.get_state()
    want = next(a)
    c = stream()
    c.set_state(state)
    np.testing.assert_array_equal(next(c)["image"], want["image"])


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"holdout": 12},
        {"holdout": 6, "train_ratio": 0.5},
        {"augment": {"label_smoothing": 0.1, "mixup": 0.2}},
    ],
)
def test_batchwise_reading_equals_per_example_reading(overrides):
    """Without per-image randomness training reads whole batches of an in-memory source: the
    batches (examples, order, values, soft targets) equal the per-example path's bit for bit,
    and the iterator state carries over between the two."""
    cfg = data_config(**NO_AUGMENT)
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    info = pipeline.dataset_info(cfg)
    src = make_source()
    per_example = pipeline.IndexedSource(src, np.arange(len(src)))  # not an ArraySource
    assert pipeline._batchwise(cfg, src) and not pipeline._batchwise(cfg, per_example)

    def stream(source):
        return iter(pipeline.train_dataset(cfg, info, global_batch_size=8, seed=2, source=source))

    fast, slow = stream(src), stream(per_example)
    for _ in range(10):  # past an epoch boundary of the 48, 42 or 24 kept examples
        x, y = next(fast), next(slow)
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype
            np.testing.assert_array_equal(x[k], y[k])
    resumed = stream(per_example)
    resumed.set_state(fast.get_state())
    np.testing.assert_array_equal(next(resumed)["image"], next(fast)["image"])


def test_batchwise_reading_only_without_per_image_randomness():
    src = make_source()
    assert pipeline._batchwise(data_config(**NO_AUGMENT), src)
    for augment in ({"flip": True}, {"crop": "pad"}, {"color_jitter": 0.4},
                    {"randaugment_magnitude": 9}):  # fmt: skip
        assert not pipeline._batchwise(data_config(**{**NO_AUGMENT, **augment}), src)
    cfg = data_config(**NO_AUGMENT)
    cfg.corruption.kind, cfg.corruption.severity = "noise", 2
    assert not pipeline._batchwise(cfg, src)
    assert not pipeline._batchwise(data_config(**NO_AUGMENT), make_source(size=32))  # resized


def test_soft_targets_with_smoothing_and_mixup():
    cfg = data_config(label_smoothing=0.1, mixup=0.2)
    info = pipeline.dataset_info(cfg)
    batch = next(iter(pipeline.train_dataset(cfg, info, global_batch_size=8, seed=0,
                                             source=make_source())))  # fmt: skip
    probs = batch["label_probs"]
    assert probs.shape == (8, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert probs.min() >= 0.1 / 10 * 0.99


def test_eval_batches_are_padded_with_mask_and_corrupted_deterministically():
    cfg = data_config()
    info = pipeline.dataset_info(cfg)
    src = make_source(n=21)
    batches = list(pipeline.eval_dataset(cfg, info, split="test", global_batch_size=8, source=src))
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 21 and not mask[21:].any()
    labels = np.concatenate([b["label"] for b in batches])[:21]
    np.testing.assert_array_equal(labels, src.labels)
    clean = batches[0]["image"]
    noisy = [next(iter(pipeline.eval_dataset(cfg, info, split="test", global_batch_size=8, source=src,
                                             kind="gaussian_noise", severity=3)))["image"]
             for _ in range(2)]  # fmt: skip
    np.testing.assert_array_equal(noisy[0], noisy[1])
    assert np.abs(noisy[0] - clean).mean() > 0.1


def test_to_global_shards_the_batch(devices):
    from didiff_jax import sharding

    mesh = sharding.make_mesh(data=-1, fsdp=2)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    batch = {"image": np.zeros((16, 4, 4, 1), np.float32), "label": np.arange(16, dtype=np.int32)}
    out = pipeline.to_global(batch, sharding.batch_sharding(mesh))
    assert len(out["label"].sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(jax.device_get(out["label"])), batch["label"])


# ------------------------------------------------------------------------- TFDS fashion_mnist


def _prepare_fake_tfds_fashion_mnist(data_dir, n: int) -> None:
    """The real TFDS ``fashion_mnist`` builder (name, version, features), fed the first ``n``
    items of each split from the IDX files instead of a download, written as ArrayRecord."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import mnist

    class FakeFashionMNIST(mnist.FashionMNIST, skip_registration=True):
        name = "fashion_mnist"

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            import inspect

            from etils import epath

            return epath.Path(inspect.getfile(mnist.FashionMNIST))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in ("train", "test")}

        def _generate_examples(self, split):
            images, labels = fashion_mnist.load(split)
            for i in range(n):  # PNG bytes, as TFDS stores them (it encodes arrays with TF)
                png = io.BytesIO()
                Image.fromarray(images[i, :, :, 0]).save(png, "PNG")
                png.seek(0)
                yield i, {"image": png, "label": int(labels[i])}

    FakeFashionMNIST(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@needs_data
def test_tfds_fashion_mnist_source_matches_the_idx_files(tmp_path):
    import sys

    _prepare_fake_tfds_fashion_mnist(tmp_path, n=12)
    cfg = ml_collections.ConfigDict(
        {"name": "fashion_mnist_tfds", "data_dir": str(tmp_path), "image_size": 28}
    )
    for split in ("train", "test"):
        src, ref = pipeline.load_source(cfg, split), fashion_mnist.load(split)
        assert len(src) == 12
        # TFDS stores examples in the order of its key hash: compare as sets of (image, label).
        pairs = sorted((src.images[i].tobytes(), int(src.labels[i])) for i in range(12))
        assert pairs == sorted((ref[0][i].tobytes(), int(ref[1][i])) for i in range(12))
        assert src.images.shape == (12, 28, 28, 1) and src.images.dtype == np.uint8
    assert pipeline.dataset_info(cfg).num_classes == 10
    assert "tensorflow" not in sys.modules  # written and read without TensorFlow


def test_tfds_fashion_mnist_unprepared_says_how_to_prepare(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="tfds build fashion_mnist --file_format=array_record"
    ):
        fashion_mnist.load_tfds("train", data_dir=str(tmp_path))


@needs_data
def test_a_class_subset_is_relabelled_and_the_rest_held_out():
    """``data.classes``: only those classes, relabelled in the given order; the others are the
    held-out-classes OOD set."""
    cfg = data_config()
    images, labels = fashion_mnist.load("test")
    cfg.classes = (7, 2)
    info = pipeline.dataset_info(cfg)
    assert info.num_classes == 2 and info.class_names == ("Sneaker", "Pullover")
    src = pipeline.load_source(cfg, "test")
    assert len(src) == np.isin(labels, (7, 2)).sum()
    np.testing.assert_array_equal(src.images, images[np.isin(labels, (7, 2))])
    np.testing.assert_array_equal(src.labels, np.where(labels[np.isin(labels, (7, 2))] == 7, 0, 1))
    held = pipeline.held_out_classes(cfg, "test")
    assert len(held) + len(src) == len(labels)
    np.testing.assert_array_equal(held, images[~np.isin(labels, (7, 2))])
