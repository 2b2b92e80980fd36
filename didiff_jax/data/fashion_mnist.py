"""Fashion-MNIST from its IDX files: the embedded default dataset (MIT licence).

Looked up, in order, in ``data_dir`` (the config's ``data.data_dir``), ``$DIDIFF_FASHION_MNIST``, and
``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``). Both the ``.gz`` files
and their uncompressed forms are accepted. 70,000 28 x 28 grayscale images, 10 classes.

:func:`load_tfds` reads the same data from TFDS ``fashion_mnist`` prepared as ArrayRecord
(``data.name = "fashion_mnist_tfds"``; ``tfds build fashion_mnist --file_format=array_record`` on a
machine with internet and TensorFlow, which TFDS's builder needs to prepare, not to read).
"""

from __future__ import annotations

import gzip
import io
import os
import pathlib

import numpy as np

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")  # fmt: skip
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MEAN, STD = (0.2860,), (0.3530,)

MISSING_HELP = """Fashion-MNIST not found (looked for {files} in: {dirs}).
Get it with one of:
  * Debian/Ubuntu:  sudo apt-get install -y dataset-fashion-mnist   (files in {debian})
  * any machine:    download the four *-ubyte.gz files of https://github.com/zalandoresearch/fashion-mnist
                    (data/fashion/) into a directory DIR and pass --config.data.data_dir=DIR
                    (or set DIDIFF_FASHION_MNIST=DIR)."""


def _candidate_dirs(data_dir: str | None) -> list[pathlib.Path]:
    dirs = [data_dir, os.environ.get("DIDIFF_FASHION_MNIST"), DEBIAN_DIR]
    return [pathlib.Path(d) for d in dirs if d]


def _find(name: str, dirs: list[pathlib.Path]) -> pathlib.Path | None:
    for d in dirs:
        for candidate in (d / f"{name}.gz", d / name):
            if candidate.is_file():
                return candidate
    return None


def _read_idx(path: pathlib.Path) -> np.ndarray:
    """An IDX file (magic: 0, 0, dtype code, ndim; then big-endian int32 sizes; then the data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {payload.size} bytes")
    return payload.reshape(shape)


def load(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``images`` uint8 [N, 28, 28, 1] and ``labels`` int32 [N] of ``split`` ('train' or 'test')."""
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    dirs = _candidate_dirs(data_dir)
    paths = [_find(name, dirs) for name in FILES[split]]
    if any(p is None for p in paths):
        raise FileNotFoundError(
            MISSING_HELP.format(
                files=", ".join(FILES[split]), dirs=", ".join(map(str, dirs)), debian=DEBIAN_DIR
            )  # fmt: skip
        )
    images, labels = (_read_idx(p) for p in paths)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{paths[0]} and {paths[1]} disagree: {images.shape[0]} vs {labels.shape[0]}"
        )
    return images[..., None], labels.astype(np.int32)


TFDS_MISSING_HELP = """TFDS fashion_mnist is not prepared as ArrayRecord in {data_dir}.
Prepare it once (needs internet and TensorFlow; reading it later needs neither):
  tfds build fashion_mnist --file_format=array_record --data_dir={data_dir}
or use the IDX files instead: data.name='fashion_mnist' (Debian: apt-get install -y dataset-fashion-mnist)."""


def load_tfds(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``images`` uint8 [N, 28, 28, 1] and ``labels`` int32 [N] from TFDS ``fashion_mnist``
    (``split`` a TFDS split spec, e.g. ``"train"``, ``"test"``, ``"train[:10%]"``). Nothing is
    downloaded; the whole split is decoded into memory once (70k small PNGs, a few seconds)."""
    import tensorflow_datasets as tfds  # only for this source

    builder = tfds.builder("fashion_mnist", data_dir=data_dir)
    formats = builder.info.available_file_formats() if builder.is_prepared() else set()
    if tfds.core.file_adapters.FileFormat.ARRAY_RECORD not in formats:
        root = pathlib.Path(builder.data_path).parent.parent
        raise FileNotFoundError(TFDS_MISSING_HELP.format(data_dir=root))
    if split.split("[")[0] not in builder.info.splits:
        raise ValueError(
            f"TFDS fashion_mnist in {builder.data_path} has no split {split!r}; "
            f"prepared: {sorted(builder.info.splits)}"
        )
    records = tfds.data_source("fashion_mnist", split=split, data_dir=data_dir, download=False,
                               decoders={"image": tfds.decode.SkipDecoding()})  # fmt: skip
    examples = records.__getitems__(list(range(len(records))))
    # PNG decoded with PIL: TFDS's own decoder would import TensorFlow.
    images = np.stack([_decode_png(e["image"]) for e in examples])
    labels = np.array([e["label"] for e in examples], np.int32)
    return images, labels


def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.uint8)[..., None]  # [28, 28, 1]
