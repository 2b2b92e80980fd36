"""Input pipelines: grain datasets -> per-process numpy batches -> globally sharded ``jax.Array``s.

Train: source -> (per-class subset for ``data.train_ratio``) -> seeded shuffle, repeat ->
per-example augmentation and corruption (a ``random_map``: each element gets its own generator
derived from the seed and its position, so the stream is the same for any number of processes) ->
blocks of B / P examples -> mixup/cutmix, ``label_probs`` when targets are soft -> this process's
blocks (process p of P holds rows [p B / P, (p + 1) B / P) of every global batch of B). An
in-memory source trained without per-image randomness (the Fashion-MNIST configs' default) is read
a batch at a time instead, the same batches bit for bit (``_batchwise``).
Eval: the split padded to a whole number of global batches (``mask`` marks the padding), the same
observation corruption as training at a chosen severity, deterministic per example.

The iterator returned for training is a grain ``DatasetIterator`` whose state is checkpointed
with the model, so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import grain
import jax
import ml_collections
import numpy as np

from didiff_jax.checks import InputError, check_labels
from didiff_jax.data import augment, captions, corruptions, fashion_mnist, imagenet

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DataInfo:
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # model input [H, W, C]
    mean: tuple[float, ...]
    std: tuple[float, ...]


class ArraySource:
    """Random access over in-memory arrays: ``src[i] -> {"image": uint8 [H, W, C], "label": int}``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        if len(images) != len(labels):
            raise InputError(f"ArraySource: {len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": np.int32(self.labels[i])}


class IndexedSource:
    """A view of ``source`` at ``indices`` (a subset, or a padded order); adds ``mask`` if given."""

    def __init__(self, source, indices: np.ndarray, mask: np.ndarray | None = None):
        self.source, self.indices, self.mask = source, indices, mask

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        record = dict(self.source[int(self.indices[i])])
        if self.mask is not None:
            record["mask"] = np.bool_(self.mask[i])
        return record


def load_source(cfg: ml_collections.ConfigDict, split: str):
    """The random-access source of ``split`` ('train' or 'test') for ``cfg.name``. Fashion-MNIST
    with ``cfg.classes`` keeps those classes only, relabelled 0..len(classes)-1 in that order."""
    if cfg.name in ("fashion_mnist", "fashion_mnist_tfds"):
        images, labels = _fashion_mnist_arrays(cfg, split)
        classes = tuple(cfg.get("classes") or ())
        if not classes:
            return ArraySource(images, labels)
        kept = np.isin(labels, classes)
        relabel = np.zeros(10, np.int64)
        relabel[list(classes)] = np.arange(len(classes))
        return ArraySource(images[kept], relabel[labels[kept]].astype(labels.dtype))
    if cfg.name in captions.DATA_NAMES:  # records carry "tokens" [N] (and "index" for 'test')
        return captions.load_source(cfg, split)
    if cfg.name in ("imagenet_tfds", "imagenet_folder"):
        tfds_split = "train" if split == "train" else "validation"
        if cfg.name == "imagenet_tfds":
            return imagenet.imagenet_tfds(tfds_split, cfg.get("data_dir") or None)
        _require_folder_root(cfg)
        return imagenet.image_folder(cfg.root, "train" if split == "train" else "val",
                                     data_dir=cfg.get("data_dir") or None)  # fmt: skip
    raise InputError(f"data.name must be one of {DATA_NAMES}, got {cfg.name!r}")


DATA_NAMES = ("fashion_mnist", "fashion_mnist_tfds", "imagenet_tfds", "imagenet_folder",
              *captions.DATA_NAMES)  # fmt: skip


def _require_folder_root(cfg: ml_collections.ConfigDict) -> None:
    if not cfg.get("root"):
        raise InputError("data.name='imagenet_folder' needs --config.data.root=DIR "
                         "(DIR/train/<wnid>/*.JPEG, DIR/val/<wnid>/*.JPEG)")  # fmt: skip


def _fashion_mnist_arrays(cfg: ml_collections.ConfigDict, split: str):
    if cfg.name == "fashion_mnist":
        return fashion_mnist.load(split, cfg.get("data_dir"))
    return fashion_mnist.load_tfds(split, cfg.get("data_dir") or None)


def held_out_classes(cfg: ml_collections.ConfigDict, split: str) -> np.ndarray:
    """uint8 images [N, H, W, C] of ``split``'s classes that ``cfg.classes`` leaves out (the
    held-out-classes OOD set); empty when every class is kept."""
    images, labels = _fashion_mnist_arrays(cfg, split)
    classes = tuple(cfg.get("classes") or range(10))
    return images[~np.isin(labels, classes)]


def check_data(cfg: ml_collections.ConfigDict, splits: tuple[str, ...] = ("train", "test")) -> None:
    """The cheap checks of ``cfg``'s data for ``splits`` ('train', 'test'), run before a run
    starts so that a missing or malformed evaluation split fails before training, not after it.

    Fashion-MNIST (IDX): the four files in the one directory, their headers and every label.
    Image folder: the root, split and class folders exist (no image is listed). COCO captions:
    the root, annotation files and image folders exist. TFDS sources are checked when opened.
    Raises :class:`~didiff_jax.checks.InputError` (or ``MissingInputError``)."""
    if cfg.name not in DATA_NAMES:
        raise InputError(f"data.name must be one of {DATA_NAMES}, got {cfg.name!r}")
    if cfg.name == "fashion_mnist":
        fashion_mnist.check(cfg.get("data_dir") or None, splits)
    elif cfg.name == "imagenet_folder":
        _require_folder_root(cfg)
        imagenet.check_folder(cfg.root, ["train" if s == "train" else "val" for s in splits])
    elif cfg.name == "coco_captions":
        captions.check_root(cfg, splits)


def _check_source_labels(source, num_classes: int, split: str) -> None:
    """Labels outside [0, K) in a source whose labels are at hand without decoding (an
    ``ArraySource``, or any source with a ``labels`` array): ``InputError`` before any batch."""
    labels = getattr(source, "labels", None)
    if labels is not None:
        check_labels(
            np.asarray(labels), num_classes, f"the {split!r} source ({type(source).__name__})"
        )


def dataset_info(cfg: ml_collections.ConfigDict) -> DataInfo:
    res = cfg.image_size
    if cfg.name in ("fashion_mnist", "fashion_mnist_tfds"):
        classes = tuple(cfg.get("classes") or range(10))
        names = tuple(fashion_mnist.CLASS_NAMES[c] for c in classes)
        return DataInfo(len(names), names, (res, res, 1), fashion_mnist.MEAN, fashion_mnist.STD)
    if cfg.name in captions.DATA_NAMES:  # classes = the vocabulary of the training captions
        vocab, (mean, std) = captions.tokenizer_for(cfg).vocab, captions.mean_std(cfg)
        return DataInfo(len(vocab), vocab, (res, res, int(cfg.channels)), mean, std)
    if cfg.name in ("imagenet_tfds", "imagenet_folder"):
        names = tuple(imagenet.class_names(load_source(cfg, "train")))
        return DataInfo(len(names), names, (res, res, 3), IMAGENET_MEAN, IMAGENET_STD)
    raise InputError(f"data.name must be one of {DATA_NAMES}, got {cfg.name!r}")


def class_subset(labels: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Indices keeping ``int(n_c * ratio)`` (at least 1) examples of each class, seeded [ref]."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, size=max(1, int(len(idx) * ratio)), replace=False))
    return np.sort(np.concatenate(keep))


def training_indices(cfg: ml_collections.ConfigDict, source) -> np.ndarray | None:
    """The indices of ``source`` (the train split) that training reads, or None for all of them:
    the split without its last ``cfg.holdout`` examples (kept apart, e.g. to fit a temperature),
    then the class-balanced ``cfg.train_ratio`` subset of those."""
    holdout = int(cfg.get("holdout", 0) or 0)
    ratio = cfg.get("train_ratio", 1.0)
    if not holdout and ratio >= 1.0:
        return None
    if holdout >= len(source):
        raise InputError(f"data.holdout={holdout}: the train split has only {len(source)} examples")
    kept = np.arange(len(source) - holdout)
    if ratio < 1.0:
        labels = labels_of(source)[kept] if holdout else labels_of(source)
        kept = kept[class_subset(labels, ratio, cfg.get("ratio_seed", 0))]
    return kept


def holdout_indices(cfg: ml_collections.ConfigDict, source) -> np.ndarray:
    """The last ``cfg.holdout`` indices of the train split: examples training never reads."""
    holdout = int(cfg.get("holdout", 0) or 0)
    return np.arange(len(source) - holdout, len(source))


def labels_of(source) -> np.ndarray:
    """All labels of a source (the per-class training subset needs them)."""
    if isinstance(source, ArraySource):
        return source.labels
    if hasattr(source, "labels"):
        return np.asarray(source.labels)
    return np.array([source[i]["label"] for i in range(len(source))])


def _to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _normalise(image: np.ndarray, info: DataInfo) -> np.ndarray:
    return (image - np.asarray(info.mean, np.float32)) / np.asarray(info.std, np.float32)


def _observe(image: np.ndarray, cfg: ml_collections.ConfigDict, kind: str | None, severity: int,
             rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Float image in [0, 1] -> the degraded observation ``y = h(x)`` the model sees."""
    if kind and severity:
        image = corruptions.corrupt(image, kind, severity, rng)
    return image


def _passthrough(record: dict) -> dict:
    """The record's targets: ``label`` (classification), ``tokens`` and ``index`` (captions)."""
    return {k: record[k] for k in ("label", "tokens", "index") if k in record}


def preprocess_train(record: dict, rng: np.random.Generator, cfg: ml_collections.ConfigDict,
                     info: DataInfo) -> dict:  # fmt: skip
    aug = cfg.augment
    image = record["image"]
    res = cfg.image_size
    crop = aug.get("crop", "none")
    if crop == "rrc":
        image = augment.random_resized_crop(
            image, res, rng, scale=tuple(aug.get("rrc_scale", (0.08, 1.0)))
        )
    else:
        if image.shape[:2] != (res, res):
            image = augment.resize(image, res)
        if crop == "pad":
            image = augment.random_crop_with_padding(image, rng, padding=aug.get("pad", 2))
    if aug.get("flip", False):
        image = augment.random_flip(image, rng)
    if aug.get("color_jitter", 0.0):
        cj = aug.color_jitter
        image = augment.color_jitter(image, rng, brightness=cj, contrast=cj, saturation=cj)
    if aug.get("randaugment_magnitude", 0):
        image = augment.rand_augment(image, rng, num_ops=aug.get("randaugment_ops", 2),
                                     magnitude=aug.randaugment_magnitude,
                                     magnitude_std=aug.get("randaugment_std", 0.5))  # fmt: skip
    image = _observe(_to_float(image), cfg, cfg.corruption.kind, cfg.corruption.severity, rng)
    return {"image": _normalise(image, info), **_passthrough(record)}


def preprocess_eval(record: dict, rng: np.random.Generator, cfg: ml_collections.ConfigDict,
                    info: DataInfo, kind: str | None, severity: int) -> dict:  # fmt: skip
    image = record["image"]
    res = cfg.image_size
    if cfg.name in ("fashion_mnist", "fashion_mnist_tfds", *captions.DATA_NAMES):
        if image.shape[:2] != (res, res):
            image = augment.resize(image, res)  # captions: the whole image, as in training
    else:
        image = augment.resize_for_eval(image, res)
    image = _observe(_to_float(image), cfg, kind, severity, rng)
    out = {"image": _normalise(image, info), **_passthrough(record)}
    if "mask" in record:
        out["mask"] = record["mask"]
    return out


def _soft_targets(batch: dict, rng: np.random.Generator, cfg: ml_collections.ConfigDict,
                  num_classes: int) -> dict:  # fmt: skip
    """Label smoothing and mixup/cutmix: adds ``label_probs`` (which selects the soft losses)."""
    aug = cfg.augment
    smoothing, mix, cut = (
        aug.get("label_smoothing", 0.0),
        aug.get("mixup", 0.0),
        aug.get("cutmix", 0.0),
    )
    if not (smoothing or mix or cut):
        return batch
    targets = augment.one_hot_smooth(batch["label"], num_classes, smoothing)
    images, targets = augment.mixup_cutmix(batch["image"], targets, rng, mixup_alpha=mix,
                                           cutmix_alpha=cut)  # fmt: skip
    return {**batch, "image": images, "label_probs": targets.astype(np.float32)}


def _batchwise(cfg: ml_collections.ConfigDict, source) -> bool:
    """Whether training can read whole batches of ``source`` at once: an in-memory source at the
    training resolution, and no per-image randomness (no crop, flip, colour or RandAugment
    augmentation, no observation corruption), so that ``preprocess_train`` is one array expression.
    Per-image reading costs ~70 us an image in grain and numpy, ~6% of a DiDiRN-18 width-16 step."""
    aug, res = cfg.augment, cfg.image_size
    return (isinstance(source, ArraySource) and source.images.shape[1:3] == (res, res)
            and aug.get("crop", "none") == "none" and not aug.get("flip", False)
            and not aug.get("color_jitter", 0.0) and not aug.get("randaugment_magnitude", 0)
            and not (cfg.corruption.kind and cfg.corruption.severity))  # fmt: skip


def _gather_batch(source: ArraySource, idx: np.ndarray, info: DataInfo) -> dict:
    """``preprocess_train`` of the records ``idx`` [b] of ``source``, batched: equal bit for bit."""
    image = _normalise(_to_float(source.images[idx]), info)  # [b, H, W, C]
    return {"image": image, "label": source.labels[idx].astype(np.int32)}


def train_dataset(cfg: ml_collections.ConfigDict, info: DataInfo, *, global_batch_size: int,
                  seed: int, source=None) -> grain.IterDataset:  # fmt: skip
    """The infinite training stream of this process's share of each global batch."""
    P, p = jax.process_count(), jax.process_index()
    if global_batch_size % P:
        raise InputError(f"batch size {global_batch_size} is not divisible by {P} processes")
    source = load_source(cfg, "train") if source is None else source
    _check_source_labels(source, info.num_classes, "train")
    kept = training_indices(cfg, source)
    n = len(source) if kept is None else len(kept)
    # Blocks of B / P consecutive examples; process p takes blocks p, p + P, ...: the p-th block of
    # every global batch, so the global batch (and its order) is the single-process one.
    if _batchwise(cfg, source):  # the same examples and order as below, gathered per batch
        ds = grain.MapDataset.range(n).seed(seed).shuffle().repeat(None)
        ds = ds.batch(global_batch_size // P, drop_remainder=True)
        ds = ds.map(lambda idx: _gather_batch(source, idx if kept is None else kept[idx], info))
    else:
        if kept is not None:
            source = IndexedSource(source, kept)
        ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
        ds = ds.random_map(lambda r, rng: preprocess_train(r, rng, cfg, info))
        ds = ds.batch(global_batch_size // P, drop_remainder=True)
    ds = ds.random_map(lambda b, rng: _soft_targets(b, rng, cfg, info.num_classes))[p::P]
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.get("num_threads", 2),
                                                prefetch_buffer_size=4))  # fmt: skip


def eval_dataset(cfg: ml_collections.ConfigDict, info: DataInfo, *, split: str,
                 global_batch_size: int, kind: str | None = None, severity: int = 0,
                 source=None, max_examples: int | None = None,
                 seed: int = 0) -> grain.MapDataset:  # fmt: skip
    """Batches of ``split`` padded to whole global batches; ``mask`` is False on the padding."""
    P, p = jax.process_count(), jax.process_index()
    source = load_source(cfg, split) if source is None else source
    _check_source_labels(source, info.num_classes, split)
    n = len(source) if max_examples is None else min(len(source), max_examples)
    padded = math.ceil(n / global_batch_size) * global_batch_size
    order = np.arange(padded)
    view = IndexedSource(source, order % n, order < n)
    ds = grain.MapDataset.source(view).seed(seed)
    ds = ds.random_map(lambda r, rng: preprocess_eval(r, rng, cfg, info, kind, severity))
    return ds.batch(global_batch_size // P, drop_remainder=True)[p::P]  # as in train_dataset


def to_global(batch: dict, sharding: jax.sharding.Sharding) -> dict:
    """Per-process numpy batch -> global ``jax.Array``s split over the mesh's batch axes."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def iterate(ds, sharding: jax.sharding.Sharding) -> Iterator[dict]:
    for batch in ds:
        yield to_global(batch, sharding)
