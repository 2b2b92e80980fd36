"""Fashion-MNIST from its IDX files: the embedded default dataset (MIT licence).

Looked up, in order, in ``data_dir`` (the config's ``data.data_dir``), ``$DIDIFF_FASHION_MNIST``, and
``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``). Both the ``.gz`` files
and their uncompressed forms are accepted. 70,000 28 x 28 grayscale images, 10 classes.
"""

from __future__ import annotations

import gzip
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
