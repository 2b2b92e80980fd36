"""Fashion-MNIST from its IDX files: the embedded default dataset (MIT licence).

Read from one directory: ``data_dir`` (the config's ``data.data_dir``) if given, else
``$DIDIFF_FASHION_MNIST`` if set, else ``/usr/share/datasets/fashion-mnist`` (Debian's
``dataset-fashion-mnist``). A directory the user names must hold all four files; nothing is taken
from another copy. Both the ``.gz`` files and their uncompressed forms are accepted. 70,000 28 x 28 grayscale images, 10 classes.

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

from didiff_jax.checks import InputError, MissingInputError, check_labels

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


def _chosen_dir(data_dir: str | None) -> tuple[pathlib.Path, str | None]:
    """The one directory to read and the setting that named it (None: the Debian default).

    A directory the user names (``data_dir``, else ``$DIDIFF_FASHION_MNIST``) is the only place
    looked in: a missing directory or file there is an error, never a reason to read the system
    copy instead (that would train on data other than the data given)."""
    if data_dir:
        return pathlib.Path(data_dir), f"data.data_dir={data_dir}"
    env = os.environ.get("DIDIFF_FASHION_MNIST")
    if env:
        return pathlib.Path(env), f"$DIDIFF_FASHION_MNIST={env}"
    return pathlib.Path(DEBIAN_DIR), None


def _find(name: str, d: pathlib.Path) -> pathlib.Path | None:
    for candidate in (d / f"{name}.gz", d / name):
        if candidate.is_file():
            return candidate
    return None


def files(data_dir: str | None = None) -> dict[str, pathlib.Path]:
    """``{file name: path}`` of the four IDX files, all from one directory (see :func:`load`).

    Raises ``MissingInputError`` naming the directory and the first missing file; all four are
    required so that a run cannot train on the user's files and test on another copy."""
    directory, named_by = _chosen_dir(data_dir)
    names = [name for pair in FILES.values() for name in pair]
    if named_by is None:  # the system default: say how to install it
        found = {name: _find(name, directory) for name in names}
        if any(p is None for p in found.values()):
            raise MissingInputError(MISSING_HELP.format(files=", ".join(names), dirs=directory,
                                                        debian=DEBIAN_DIR))  # fmt: skip
        return found
    expected = f"expected the four Fashion-MNIST IDX files ({', '.join(names)}; .gz or not)"
    if not directory.is_dir():
        raise MissingInputError(f"{named_by}: no such directory ({expected})")
    found = {}
    for name in names:
        found[name] = _find(name, directory)
        if found[name] is None:
            raise MissingInputError(f"{named_by} has no {name} or {name}.gz ({expected} in "
                                    "that one directory)")  # fmt: skip
    return found


def _read_idx(path: pathlib.Path, *, header_only: bool = False) -> np.ndarray | tuple[int, ...]:
    """An IDX file (magic: 0, 0, dtype code, ndim; then big-endian int32 sizes; then the data);
    with ``header_only`` just its shape, read from the first bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read(4 + 4 * 255) if header_only else f.read()
    except (OSError, EOFError) as e:  # a damaged .gz
        raise InputError(f"{path}: cannot be read as IDX ({type(e).__name__}: {e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise InputError(f"{path} is not an unsigned-byte IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise InputError(f"{path} is truncated: its header promises {ndim} dimensions")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if header_only:
        return shape
    payload = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise InputError(f"{path} is truncated: header says {shape}, found {payload.size} bytes")
    return payload.reshape(shape)


def _check_pair(image_path: pathlib.Path, image_shape: tuple[int, ...],
                label_path: pathlib.Path, label_shape: tuple[int, ...]) -> None:  # fmt: skip
    if len(image_shape) != 3:
        raise InputError(f"{image_path}: expected images N x H x W, the header says {image_shape}")
    if len(label_shape) != 1:
        raise InputError(f"{label_path}: expected labels N, the header says {label_shape}")
    if image_shape[0] != label_shape[0]:
        raise InputError(f"{image_path} and {label_path} disagree: {image_shape[0]} images, "
                         f"{label_shape[0]} labels")  # fmt: skip


def check(data_dir: str | None = None, splits: tuple[str, ...] = ("train", "test")) -> None:
    """Everything :func:`load` would reject for ``splits``, at the cost of reading the label files
    and the image headers (about a tenth of a second): run before training so that a bad test
    split fails before the training, not after it. All four files must exist in any case."""
    found = files(data_dir)
    for split in splits:
        image_name, label_name = FILES[split]
        image_path, label_path = found[image_name], found[label_name]
        labels = _read_idx(label_path)
        _check_pair(image_path, _read_idx(image_path, header_only=True), label_path, labels.shape)
        check_labels(labels, len(CLASS_NAMES), str(label_path))


def load(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``images`` uint8 [N, H, W, 1] and ``labels`` int32 [N] of ``split`` ('train' or 'test').

    Read from ``data_dir`` if given, else from ``$DIDIFF_FASHION_MNIST`` if set, else from the
    Debian package's directory; only from that one directory, which must hold all four files.
    Labels outside [0, 10) raise ``InputError`` naming the file."""
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    found = files(data_dir)
    image_path, label_path = (found[name] for name in FILES[split])
    images, labels = _read_idx(image_path), _read_idx(label_path)
    _check_pair(image_path, images.shape, label_path, labels.shape)
    check_labels(labels, len(CLASS_NAMES), str(label_path))
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
        raise MissingInputError(TFDS_MISSING_HELP.format(data_dir=root))
    if split.split("[")[0] not in builder.info.splits:
        raise InputError(
            f"TFDS fashion_mnist in {builder.data_path} has no split {split!r}; "
            f"prepared: {sorted(builder.info.splits)}"
        )
    records = tfds.data_source("fashion_mnist", split=split, data_dir=data_dir, download=False,
                               decoders={"image": tfds.decode.SkipDecoding()})  # fmt: skip
    examples = records.__getitems__(list(range(len(records))))
    # PNG decoded with PIL: TFDS's own decoder would import TensorFlow.
    images = np.stack([_decode_png(e["image"]) for e in examples])
    labels = np.array([e["label"] for e in examples], np.int32)
    check_labels(labels, len(CLASS_NAMES), f"TFDS fashion_mnist {split!r} in {builder.data_path}")
    return images, labels


def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.uint8)[..., None]  # [28, 28, 1]
