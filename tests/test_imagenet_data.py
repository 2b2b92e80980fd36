"""ImageNet sources on tiny fixtures written here: an image folder of real JPEG/PNG files and a fake
TFDS ``imagenet2012`` ArrayRecord preparation (same name, version and features as the real one)."""

import inspect
import os
import pickle
import sys
import warnings
from pathlib import Path

import grain
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.datasets.imagenet2012 import (
    imagenet2012_dataset_builder as imagenet_builder,
)

from didiff_jax.checks import InputError, MissingInputError
from didiff_jax.data import pipeline
from didiff_jax.data.imagenet import (
    CorruptImageWarning,
    ImageNetSource,
    check_folder,
    class_names,
    image_folder,
    imagenet_tfds,
)

WNIDS = ["n02085620", "n01440764", "n01530575"]  # deliberately not sorted on disk creation
SORTED = sorted(WNIDS)
CORRUPT = "x.JPEG"


def _save(path: Path, array: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def make_folder(root: Path) -> dict[str, list[tuple[str, tuple[int, int]]]]:
    """3 classes x 4 images per split (JPEG, .jpg, RGB PNG, grayscale PNG), plus one corrupt file.

    Returns per split the expected (wnid, (H, W)) in reading order (sorted wnid, sorted name).
    """
    rng = np.random.default_rng(0)
    expected = {}
    for split in ("train", "val"):
        rows = []
        for k, wnid in enumerate(WNIDS):
            files = {
                f"{wnid}_0.JPEG": ((20 + k, 30), "JPEG", 3),
                f"{wnid}_1.jpg": ((17, 11 + k), "JPEG", 3),
                f"{wnid}_2.png": ((9, 14), "PNG", 3),
                f"{wnid}_3.PNG": ((12 + k, 8), "PNG", 1),  # grayscale: must come back as RGB
            }
            for name, ((h, w), fmt, c) in files.items():
                shape = (h, w, c) if c == 3 else (h, w)
                _save(root / split / wnid / name, rng.integers(0, 256, shape, np.uint8), fmt)
            rows += [(wnid, name, hw) for name, (hw, _, _) in files.items()]
        (root / split / WNIDS[0] / "notes.txt").write_text("not an image")
        expected[split] = [(w, hw) for w, _, hw in sorted(rows, key=lambda r: (r[0], r[1]))]
    (root / "train" / WNIDS[1] / CORRUPT).write_bytes(rng.bytes(500))
    return expected


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imagenet"
    expected = make_folder(root)
    return root, tmp_path / "tfds", expected


def _prepare(root: Path, data_dir: Path) -> tuple[ImageNetSource, list]:
    """``image_folder(root, "train")`` and the CorruptImageWarnings it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src = image_folder(os.fspath(root), "train", data_dir=os.fspath(data_dir))
    return src, [w for w in caught if issubclass(w.category, CorruptImageWarning)]


def test_image_folder_lengths_labels_images(folder):
    root, data_dir, expected = folder
    with pytest.warns(CorruptImageWarning) as record:
        train = image_folder(os.fspath(root), "train", data_dir=os.fspath(data_dir))
    messages = [str(w.message) for w in record]
    corrupt_path = os.fspath((root / "train" / WNIDS[1] / CORRUPT).resolve())
    assert any(corrupt_path in m and "skipping" in m for m in messages), messages
    assert any("skipped 1 unreadable" in m for m in messages), messages

    val = image_folder(os.fspath(root), "val", data_dir=os.fspath(data_dir))
    for src, split in ((train, "train"), (val, "val")):
        assert len(src) == 12 == len(expected[split])
        assert class_names(src) == src.class_names == SORTED
        assert src.num_classes == 3
        for i, (wnid, (h, w)) in enumerate(expected[split]):
            ex = src[i]
            assert set(ex) == {"image", "label"}
            assert ex["label"] == SORTED.index(wnid)
            assert ex["image"].dtype == np.uint8 and ex["image"].shape == (h, w, 3)
    # labels follow sorted wnid order: 4 images per class, classes in sorted order
    assert [train[i]["label"] for i in range(len(train))] == [0] * 4 + [1] * 4 + [2] * 4


def test_image_folder_pixels_roundtrip(tmp_path):
    """Lossless PNG (RGB and grayscale) comes back bit-exact; grayscale is replicated to RGB."""
    root = tmp_path / "r"
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), np.uint8)
    gray = np.random.default_rng(2).integers(0, 256, (6, 4), np.uint8)
    pal = Image.fromarray(rgb).convert("P")  # palette PNG: must be RGB, not palette indices
    _save(root / "val" / "a" / "rgb.png", rgb, "PNG")
    _save(root / "val" / "b" / "gray.png", gray, "PNG")
    pal.save(root / "val" / "b" / "pal.png")
    src = image_folder(os.fspath(root), "validation", data_dir=os.fspath(tmp_path / "d"))
    assert len(src) == 3
    np.testing.assert_array_equal(src[0]["image"], rgb)
    np.testing.assert_array_equal(src[1]["image"], np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(src[2]["image"], np.asarray(pal.convert("RGB")))
    assert [src[i]["label"] for i in range(3)] == [0, 1, 1]


def test_image_folder_second_call_does_not_rewrite(folder):
    root, data_dir, _ = folder
    first, caught = _prepare(root, data_dir)
    assert len(caught) == 2  # the per-file warning and the summary
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    assert any("array_record" in p.name for p in files)
    assert any(p.name == "didiff_image_folder.json" for p in files)
    before = {p: p.stat().st_mtime_ns for p in files}

    second, caught = _prepare(root, data_dir)
    assert caught == []  # nothing re-scanned, so no warnings again
    after = {p: p.stat().st_mtime_ns for p in sorted(p for p in data_dir.rglob("*") if p.is_file())}
    assert after == before
    assert len(second) == len(first)
    np.testing.assert_array_equal(second[5]["image"], first[5]["image"])


def test_image_folder_detects_changed_classes(folder):
    root, data_dir, _ = folder
    _prepare(root, data_dir)
    _save(root / "train" / "n09999999" / "a.JPEG", np.zeros((4, 4, 3), np.uint8), "JPEG")
    with pytest.raises(ValueError, match=r"(?s)class folders changed.*n09999999.*Delete"):
        image_folder(os.fspath(root), "train", data_dir=os.fspath(data_dir))


def test_image_folder_missing_folders(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"(?s)does not exist.*<root>/train/<wnid>/\*\.JPEG"
    ):
        image_folder(os.fspath(tmp_path / "nope"), "train", data_dir=os.fspath(tmp_path))
    _save(
        tmp_path / "only_train" / "train" / "n1" / "a.JPEG", np.zeros((4, 4, 3), np.uint8), "JPEG"
    )
    with pytest.raises(FileNotFoundError, match=r"(?s)no 'val' sub-folder.*<root>/val/<wnid>"):
        image_folder(os.fspath(tmp_path / "only_train"), "val", data_dir=os.fspath(tmp_path))
    with pytest.raises(ValueError, match="split must be"):
        image_folder(os.fspath(tmp_path / "only_train"), "test", data_dir=os.fspath(tmp_path))


def test_image_folder_empty_class_folder_fails_before_preparing(tmp_path):
    """A class folder without any image (here: only a .webp and a note) would give the model a
    class it never sees: refused, naming the folder, before anything is written."""
    root, data_dir = tmp_path / "r", tmp_path / "prepared"
    _save(root / "train" / "n1" / "a.JPEG", np.zeros((4, 4, 3), np.uint8), "JPEG")
    _save(root / "train" / "n2" / "b.webp", np.zeros((4, 4, 3), np.uint8), "WEBP")
    (root / "train" / "n2" / "notes.txt").write_text("x")
    empty = (root / "train" / "n2").resolve()
    with pytest.raises(InputError, match=rf"^class folder {empty} holds no image file "
                                         r"\(\.jpeg/\.jpg/\.png\); it holds 2 other entries, "
                                         r"e\.g\. \['b\.webp', 'notes\.txt'\]"):  # fmt: skip
        image_folder(os.fspath(root), "train", data_dir=os.fspath(data_dir))
    assert not data_dir.exists()


def test_image_folder_class_of_unreadable_images_fails_and_is_not_reused(tmp_path):
    root, data_dir = tmp_path / "r", tmp_path / "prepared"
    _save(root / "train" / "n1" / "a.JPEG", np.zeros((4, 4, 3), np.uint8), "JPEG")
    (root / "train" / "n2").mkdir(parents=True)
    for name in ("x.JPEG", "y.png"):
        (root / "train" / "n2" / name).write_bytes(b"not an image")
    lost = (root / "train" / "n2").resolve()
    for _ in range(2):  # the failed preparation is removed: the second call fails the same way
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CorruptImageWarning)
            with pytest.raises(InputError, match=rf"^every image file in class folder {lost} is "
                                                 r"unreadable \(2 files; 1 such folders\)"):  # fmt: skip
                image_folder(os.fspath(root), "train", data_dir=os.fspath(data_dir))
    assert not list(data_dir.rglob("*.array_record*"))


def test_check_folder_before_a_run(tmp_path):
    """The cheap pre-run check: the evaluation split's folder is required before training."""
    _save(tmp_path / "r" / "train" / "n1" / "a.JPEG", np.zeros((4, 4, 3), np.uint8), "JPEG")
    check_folder(tmp_path / "r", ["train"])
    cfg = ml_collections.ConfigDict({"name": "imagenet_folder", "root": str(tmp_path / "r")})
    pipeline.check_data(cfg, ("train",))  # training alone: no 'val' needed
    with pytest.raises(MissingInputError, match=r"has no 'val' sub-folder"):
        pipeline.check_data(cfg)  # training then evaluating: 'val' must be there first
    cfg.root = ""
    with pytest.raises(InputError, match=r"needs --config\.data\.root=DIR"):
        pipeline.check_data(cfg)
    with pytest.raises(
        MissingInputError, match=r"has no 'val' sub-folder \(needed for split 'val'\)"
    ):
        check_folder(tmp_path / "r")
    (tmp_path / "r" / "val").mkdir()
    with pytest.raises(MissingInputError, match=r"r/val has no class sub-folders"):
        check_folder(tmp_path / "r")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MissingInputError, match=r"image folder root .*file is not a directory"):
        check_folder(tmp_path / "file")


def test_image_folder_with_grain_and_pickle(folder):
    root, data_dir, _ = folder
    src, _ = _prepare(root, data_dir)
    ds = grain.MapDataset.source(src)
    assert len(ds) == 12
    ex = ds[7]
    assert ex["label"] == 1 and ex["image"].dtype == np.uint8 and ex["image"].ndim == 3
    batch = ds.shuffle(seed=0).map(lambda e: e["label"]).to_iter_dataset()
    assert sorted(batch) == [0] * 4 + [1] * 4 + [2] * 4
    clone = pickle.loads(pickle.dumps(src))  # grain worker processes receive pickled sources
    assert len(clone) == 12 and clone.class_names == SORTED
    np.testing.assert_array_equal(clone[3]["image"], src[3]["image"])
    items = src.__getitems__([0, 11])
    assert [e["label"] for e in items] == [0, 2]
    sliced = image_folder(os.fspath(root), "train[:5]", data_dir=os.fspath(data_dir))
    assert len(sliced) == 5


# ------------------------------------------------------------------------------ imagenet2012


class _FakeImagenet2012(imagenet_builder.Builder, skip_registration=True):
    """The real imagenet2012 builder (name, version, features) with a few generated images."""

    name = "imagenet2012"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(imagenet_builder.Builder))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(7), "validation": self._generate_examples(3)}

    def _generate_examples(self, n):
        rng = np.random.default_rng(n)
        names = self.info.features["label"].names
        for i in range(n):
            path = epath.Path(os.environ["FAKE_IMAGENET_TMP"]) / f"{n}_{i}.JPEG"
            Image.fromarray(rng.integers(0, 256, (8 + i, 10, 3), np.uint8)).save(path, "JPEG")
            yield f"{n}_{i}", {"image": path, "label": names[i * 100], "file_name": path.name}


def test_imagenet_tfds_reads_prepared_array_record(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_IMAGENET_TMP", os.fspath(tmp_path))
    data_dir = tmp_path / "tfds"
    _FakeImagenet2012(
        data_dir=os.fspath(data_dir), file_format="array_record"
    ).download_and_prepare()

    train = imagenet_tfds("train", data_dir=os.fspath(data_dir))
    val = imagenet_tfds("val", data_dir=os.fspath(data_dir))
    assert (len(train), len(val)) == (7, 3)
    names = class_names(train)
    assert len(names) == 1000 and names[0] == "n01440764"
    ds = grain.MapDataset.source(train)
    labels = sorted(ds[i]["label"] for i in range(len(ds)))
    assert labels == [i * 100 for i in range(7)]
    for i in range(len(val)):
        ex = val[i]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape[1:] == (10, 3)
    assert len(imagenet_tfds("train[:4]", data_dir=os.fspath(data_dir))) == 4
    with pytest.raises(FileNotFoundError, match="no split 'test'"):
        imagenet_tfds("test", data_dir=os.fspath(data_dir))
    assert "tensorflow" not in sys.modules  # written and read without TensorFlow


def test_imagenet_tfds_unprepared_gives_instructions(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        imagenet_tfds("train", data_dir=os.fspath(tmp_path))
    msg = str(err.value)
    assert os.fspath(tmp_path / "downloads" / "manual") in msg
    assert "ILSVRC2012_img_train.tar" in msg and "ILSVRC2012_img_val.tar" in msg
    assert "--file_format=array_record" in msg
    assert "image_folder" in msg and "<root>/train/<wnid>/*.JPEG" in msg
