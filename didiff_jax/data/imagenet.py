"""ImageNet-1k as random-access sources for grain, read from ArrayRecord through TFDS.

Two ways in, both ending in the same kind of source (``len(src)``, ``src[i] -> {"image", "label"}``
with ``image`` a uint8 ``[H, W, 3]`` array), so ``grain.MapDataset.source(src)`` works with either:

* :func:`imagenet_tfds` reads TFDS ``imagenet2012`` already prepared as ArrayRecord
  (``tfds.data_source``). Reading needs no TensorFlow; *preparing* it from the ILSVRC2012 tars
  with TFDS's own builder does (that builder calls ``tf.io.gfile`` and TF image ops), so do that
  step once elsewhere, or use the folder layout instead.
* :func:`image_folder` reads the plain layout ``root/{train,val}/<wnid>/*.JPEG``. A small TFDS
  builder writes it once to ArrayRecord (TFDS writes ArrayRecord without TensorFlow), after which
  every call only reads. Unreadable images are skipped with a warning at preparation time; a
  class folder without any (readable) image is an error.

Images are decoded here with PIL and ``convert("RGB")`` rather than by TFDS's NumPy decoder,
because that decoder returns palette indices for ``P`` images and 4 channels for RGBA/CMYK.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import constants as tfds_constants

from didiff_jax.checks import InputError, MissingInputError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
FOLDER_SPLITS = ("train", "val")
MARKER_FILE = "didiff_image_folder.json"
FOLDER_LAYOUT = (
    "expected layout:\n"
    "  <root>/train/<wnid>/*.JPEG   e.g. <root>/train/n01440764/n01440764_10026.JPEG\n"
    "  <root>/val/<wnid>/*.JPEG     e.g. <root>/val/n01440764/ILSVRC2012_val_00000293.JPEG\n"
    "(one sub-folder per class, class index = sorted folder name; .jpg/.jpeg/.png accepted)"
)
FOLDER_LAYOUT_LINE = (
    "expected <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (one sub-folder per class, "
    "class index = sorted folder name; .jpg/.jpeg/.png accepted)"
)


class CorruptImageWarning(UserWarning):
    """An image file in an image folder could not be decoded and was left out of the dataset."""


class ImageNetSource:
    """Random-access view of one split: ``src[i] -> {"image": uint8 [H, W, 3], "label": int}``.

    Wraps a TFDS ``ArrayRecordDataSource`` whose ``image`` feature is left encoded, and decodes
    each image with PIL to RGB. Picklable, so it can go to grain worker processes.
    """

    def __init__(self, records: Sequence[dict[str, Any]], class_names: Sequence[str], name: str):
        self._records = records
        self.class_names: list[str] = list(class_names)
        self.name = name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _to_example(self._records[int(index)])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Batched read (ArrayRecord reads several records at once faster than one by one)."""
        return [_to_example(r) for r in self._records.__getitems__([int(i) for i in indices])]

    def __repr__(self) -> str:
        return f"ImageNetSource({self.name}, len={len(self)}, num_classes={self.num_classes})"


def class_names(source: ImageNetSource) -> list[str]:
    """The class names of a source, indexed by label (ImageNet wnids such as ``n01440764``)."""
    return list(source.class_names)


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, any PIL format or mode) -> uint8 ``[H, W, 3]`` RGB."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _to_example(record: dict[str, Any]) -> dict[str, Any]:
    return {"image": decode_image(record["image"]), "label": int(record["label"])}


# ------------------------------------------------------------------------------ TFDS imagenet2012


def imagenet_tfds(split: str, data_dir: str | None = None) -> ImageNetSource:
    """One split of TFDS ``imagenet2012`` prepared as ArrayRecord in ``data_dir``.

    ``split`` is a TFDS split spec (``"train"``, ``"validation"``, ``"train[:1%]"``...); ``"val"``
    is accepted for ``"validation"``. ``data_dir=None`` means TFDS's default
    (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). Nothing is downloaded or generated: a
    missing or TFRecord-only preparation raises ``FileNotFoundError`` that says what to do.
    Class names are the wnids TFDS stores with the dataset.
    """
    split = _tfds_split(split)
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    root = Path(builder.data_path).parent.parent
    if not builder.is_prepared():
        raise FileNotFoundError(_imagenet_not_prepared_message(root, Path(builder.data_path)))
    formats = builder.info.available_file_formats()
    if tfds.core.file_adapters.FileFormat.ARRAY_RECORD not in formats:
        raise FileNotFoundError(
            f"imagenet2012 in {builder.data_path} is prepared as "
            f"{sorted(f.value for f in formats)}, but random access needs ArrayRecord. "
            "Re-prepare it with --file_format=array_record (see below), or use image_folder().\n\n"
            + _imagenet_not_prepared_message(root, Path(builder.data_path))
        )
    base = split.split("[")[0]
    if base not in builder.info.splits:
        raise FileNotFoundError(
            f"imagenet2012 in {builder.data_path} has no split {base!r}; "
            f"prepared splits: {sorted(builder.info.splits)}. Put the matching ILSVRC2012 tar into "
            f"{root / 'downloads' / 'manual'} and prepare again."
        )
    records = tfds.data_source(
        "imagenet2012",
        split=split,
        data_dir=data_dir,
        download=False,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    names = builder.info.features["label"].names
    return ImageNetSource(records, names, name=f"imagenet2012/{split}")


def _tfds_split(split: str) -> str:
    return "validation" + split[3:] if split == "val" or split.startswith("val[") else split


def _imagenet_not_prepared_message(root: Path, data_path: Path) -> str:
    manual = root / "downloads" / "manual"
    return (
        f"ImageNet-1k (TFDS 'imagenet2012') is not prepared in data_dir={root} "
        f"(looked for {data_path}). Either:\n"
        "  1. Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from "
        f"https://image-net.org/download-images, registration required) into\n       {manual}/\n"
        "     and prepare once as ArrayRecord:\n"
        f"       tfds build imagenet2012 --data_dir={root} --file_format=array_record\n"
        "     TFDS's imagenet2012 builder needs TensorFlow for this one step (a separate "
        "environment with `pip install tensorflow tensorflow-datasets` is fine); reading the "
        "result here does not.\n"
        "  2. Or, without TensorFlow: extract the images into the folder layout and call "
        "didiff_jax.data.imagenet.image_folder(root, split) instead;\n"
        + FOLDER_LAYOUT
        + "\n     (the val tar is flat: move each val image into its wnid folder first)."
    )


# ------------------------------------------------------------------------------ image folders


def image_folder(root: str, split: str, *, data_dir: str | None = None) -> ImageNetSource:
    """One split of an ImageNet-style image folder, converted once to ArrayRecord through TFDS.

    ``root`` holds ``train/<wnid>/*`` and/or ``val/<wnid>/*``; ``split`` is ``"train"`` or
    ``"val"`` (``"validation"`` is accepted), optionally with a TFDS slice such as
    ``"train[:10%]"``. Class index = position of the wnid in the sorted union of the class
    folders of both splits (the same as torchvision's ImageFolder when both splits have the same
    classes, and consistent across splits otherwise).

    The first call writes all present splits to ``data_dir`` (default:
    ``<TFDS data dir>/image_folders/<root name>_<hash of root path>``), skipping unreadable
    images with a :class:`CorruptImageWarning` each. Later calls only read; if the class folders
    or split folders of ``root`` no longer match what was prepared, they raise ``ValueError``
    (files changed inside existing class folders are not detected).

    Before the first preparation, a class folder without any image file raises ``InputError``
    naming it (the model would have a class it never sees); so does, after it, a class folder
    whose every image was unreadable (that preparation is then removed, not reused).
    """
    root_path = Path(root).expanduser().resolve()
    folder = _folder_split(split)
    check_folder(root_path, [folder])
    splits = [s for s in FOLDER_SPLITS if (root_path / s).is_dir()]
    per_split = {s: _class_dirs(root_path / s) for s in splits}
    names = sorted(set().union(*per_split.values()))

    if data_dir is None:
        data_dir = os.fspath(_default_folder_data_dir(root_path))
    builder = _ImageFolderBuilder(
        root=os.fspath(root_path), splits=splits, class_names=names, data_dir=data_dir
    )
    marker = Path(builder.data_path) / MARKER_FILE
    if builder.is_prepared():
        _check_unchanged(builder, marker, root_path, splits, names)
    else:
        listed = _listed_images(root_path, per_split)  # raises on an empty class folder
        builder.download_and_prepare(file_format="array_record")
        _report_skipped(builder.skipped, root_path)
        _check_no_class_lost(listed, builder.skipped, Path(builder.data_path))
        marker.write_text(
            json.dumps(
                {
                    "root": os.fspath(root_path),
                    "splits": {s: builder.info.splits[s].num_examples for s in splits},
                    "class_names": names,
                    "skipped": builder.skipped,
                },
                indent=1,
            )
        )
    records = builder.as_data_source(
        split=_folder_tfds_split(split), decoders={"image": tfds.decode.SkipDecoding()}
    )
    return ImageNetSource(records, names, name=f"{root_path}/{split}")


def check_folder(root: str | os.PathLike, splits: Sequence[str] = FOLDER_SPLITS) -> None:
    """Raise ``MissingInputError`` unless ``root`` and its ``splits`` folders exist and each split
    folder holds class sub-folders. Lists no image file, so it is cheap enough to run before a
    run starts (the folder of the evaluation split is then known to exist before training)."""
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        what = "is not a directory" if root_path.exists() else "does not exist"
        raise MissingInputError(f"image folder root {root_path} {what}; {FOLDER_LAYOUT_LINE}")
    for split in splits:
        folder = _folder_split(split)
        if not (root_path / folder).is_dir():
            raise MissingInputError(f"image folder {root_path} has no {folder!r} sub-folder "
                                    f"(needed for split {split!r}); {FOLDER_LAYOUT_LINE}")  # fmt: skip
        if not _class_dirs(root_path / folder):
            raise MissingInputError(
                f"{root_path / folder} has no class sub-folders; {FOLDER_LAYOUT_LINE}"
            )


def _listed_images(root: Path, per_split: dict[str, list[str]]) -> dict[Path, list[Path]]:
    """``{class folder: its image files}``; ``InputError`` for a class folder without any."""
    listed = {}
    for split, wnids in per_split.items():
        for wnid in wnids:
            class_dir = root / split / wnid
            listed[class_dir] = _image_files(class_dir)
            if not listed[class_dir]:
                others = sorted(e.name for e in os.scandir(class_dir))
                shown = (
                    f"; it holds {len(others)} other entries, e.g. {others[:3]}" if others else ""
                )
                raise InputError(f"class folder {class_dir} holds no image file "
                                 f"(.jpeg/.jpg/.png){shown}: add its images or remove it")  # fmt: skip
    return listed


def _check_no_class_lost(listed: dict[Path, list[Path]], skipped: list[str],
                         prepared: Path) -> None:  # fmt: skip
    """After preparing: a class folder whose every image was skipped as unreadable is an error
    (its class would have no example); the preparation is removed so it is not reused."""
    skipped_set = set(skipped)
    lost = [d for d, paths in listed.items() if all(os.fspath(p) in skipped_set for p in paths)]
    if lost:
        shutil.rmtree(prepared, ignore_errors=True)
        raise InputError(f"every image file in class folder {lost[0]} is unreadable "
                         f"({len(listed[lost[0]])} files; {len(lost)} such folders): fix or "
                         "remove them")  # fmt: skip


def _folder_split(split: str) -> str:
    base = split.split("[")[0]
    base = "val" if base == "validation" else base
    if base not in FOLDER_SPLITS:
        raise InputError(f"split must be 'train' or 'val' (optionally sliced), got {split!r}")
    return base


def _folder_tfds_split(split: str) -> str:
    return "val" + split[len("validation") :] if split.startswith("validation") else split


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
    )


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(
        Path(e.path)
        for e in os.scandir(class_dir)
        if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
    )


def _default_folder_data_dir(root: Path) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "_", root.name.lower()).strip("_") or "root"
    digest = hashlib.sha1(os.fspath(root).encode()).hexdigest()[:10]
    return Path(tfds_constants.DATA_DIR) / "image_folders" / f"{slug}_{digest}"


def _check_unchanged(
    builder: _ImageFolderBuilder, marker: Path, root: Path, splits: list[str], names: list[str]
) -> None:
    """Refuse to read a preparation that no longer matches the folder (class list or splits)."""
    if marker.exists():
        stored = json.loads(marker.read_text())
        old_names, old_splits = stored["class_names"], sorted(stored["splits"])
        if stored["root"] != os.fspath(root):
            warnings.warn(
                f"{builder.data_path} was prepared from {stored['root']}, now read for {root} "
                "(moved folder, or two folders sharing one data_dir?)",
                stacklevel=3,
            )
    else:  # prepared but the marker was lost: fall back to what TFDS itself stored
        labels = Path(builder.data_path) / "label.labels.txt"
        old_names = labels.read_text().split() if labels.exists() else None
        old_splits = sorted(builder.info.splits)
    problems = []
    if old_names != names:
        added = sorted(set(names) - set(old_names or []))
        removed = sorted(set(old_names or []) - set(names))
        problems.append(
            f"class folders changed ({len(old_names or [])} prepared, {len(names)} now; "
            f"added {added[:5]}{'...' if len(added) > 5 else ''}, "
            f"removed {removed[:5]}{'...' if len(removed) > 5 else ''})"
        )
    if old_splits != sorted(splits):
        problems.append(f"split folders changed (prepared {old_splits}, now {sorted(splits)})")
    if problems:
        raise InputError(
            f"image folder {root} no longer matches its ArrayRecord copy in {builder.data_path}: "
            + "; ".join(problems)
            + f". Delete {builder.data_path} to prepare it again, or pass another data_dir."
        )


def _report_skipped(skipped: list[str], root: Path) -> None:
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} unreadable image file(s) under {root}: "
            + ", ".join(skipped[:20])
            + (" ..." if len(skipped) > 20 else ""),
            CorruptImageWarning,
            stacklevel=3,
        )


def _checked_image_bytes(path: Path) -> bytes:
    """The file's bytes if PIL decodes it to RGB/L as JPEG/PNG, else a lossless RGB re-encoding.

    The whole entropy-coded stream is decoded (at reduced JPEG scale via ``draft``, somewhat
    cheaper than a full decode) so truncated files are caught here, not in training.
    Raises on unreadable files.
    """
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        fmt, mode = im.format, im.mode
        im.draft("RGB", (64, 64))
        im.load()
    if fmt in ("JPEG", "PNG") and mode in ("RGB", "L"):
        return data
    # CMYK / palette / alpha / 16-bit / other formats: store plain RGB so any decoder agrees.
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    out = io.BytesIO()
    if fmt == "JPEG":
        rgb.save(out, format="JPEG", quality=95)
    else:
        rgb.save(out, format="PNG")
    return out.getvalue()


class _ImageFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder for ``root/{train,val}/<wnid>/<image>``: one ArrayRecord dataset per root.

    Features: ``image`` (the original JPEG/PNG bytes, re-encoded only for unusual colour
    modes), ``label`` (ClassLabel over the sorted wnids), ``file_name`` (``<wnid>/<file>``).
    Records keep the sorted file order (``disable_shuffling``), so index ``i`` is reproducible;
    shuffle with grain instead. Not registered with TFDS: it is built only by :func:`image_folder`.
    """

    name = "imagenet_folder"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "ImageNet-style image folder as ArrayRecord."}

    def __init__(self, *, root: str, splits: list[str], class_names: list[str], **kwargs: Any):
        self.root = Path(root)
        self.splits = list(splits)
        self.class_names = list(class_names)
        self.skipped: list[str] = []
        super().__init__(**kwargs)
        # TFDS pickles builders (inside data sources) by re-calling __init__ with this state.
        self._original_state.update(root=root, splits=self.splits, class_names=self.class_names)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        """This file. TFDS 4.9.10 resolves it through ``importlib_resources``, which current etils
        no longer installs; the plain file path is TFDS's own fallback, so use it directly."""
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"ImageNet-style image folder {self.root}",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=self.class_names),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict]]]:
        return {s: self._generate_examples(s) for s in self.splits}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
        split_dir = self.root / split
        for label, wnid in enumerate(self.class_names):
            class_dir = split_dir / wnid
            if not class_dir.is_dir():
                continue
            for path in _image_files(class_dir):
                try:
                    data = _checked_image_bytes(path)
                except Exception as err:  # one bad file must not stop a 1.3M-image preparation
                    self.skipped.append(os.fspath(path))
                    warnings.warn(
                        f"skipping unreadable image {path}: {type(err).__name__}: {err}",
                        CorruptImageWarning,
                        stacklevel=1,
                    )
                    continue
                key = f"{wnid}/{path.name}"
                yield key, {"image": data, "label": label, "file_name": key}
