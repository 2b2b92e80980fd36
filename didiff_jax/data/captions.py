"""Caption data: a word-level tokenizer, COCO-format sources, and the embedded Fashion-grid task.

Two datasets share one on-disk format, the COCO captions layout::

    <root>/annotations/captions_train2017.json   {"images": [{"id", "file_name", ...}],
    <root>/annotations/captions_val2017.json      "annotations": [{"id", "image_id", "caption"}]}
    <root>/train2017/<file_name>, <root>/val2017/<file_name>

* ``coco_captions``: MS-COCO 2017 itself (``data.root`` = the directory above).
* ``fashion_grid`` (the embedded default): composite 56 x 56 images, a 2 x 2 grid of 28 x 28 cells
  holding Fashion-MNIST items, written by :func:`generate_fashion_grid` in the same layout (PNG, so
  the cells are the source items bit for bit). Training images use Fashion-MNIST *train* items only,
  test images ("val2017") *test* items only, so the two sets share no source item.

The tokenizer is built from the training captions: lower-cased words ``[a-z0-9]+``, kept when they
occur at least ``min_count`` times, the ``vocab_size`` most frequent (ties alphabetical), after three
special tokens ``<pad>`` = 0, ``<end>`` = 1, ``<unk>`` = 2. A caption of length N is its words
(truncated to N - 1), ``<end>``, then ``<pad>`` up to N. The denoisers generate all N positions,
padding included, so a sampled caption decides its own length.

**The Fashion-grid task.** Each image shows items of two different classes A and B, split either
into columns (A in the left column, B in the right) or into rows (A on top, B below). Each group has
one or two items (two items are two different images of that class); when both groups have a single
item they share a row (columns) or a column (rows), so the split is never ambiguous. Every layout
has a set of *valid* captions: 4 templates per split ("{A} on the left and {B} on the right",
"{B} on the right and {A} on the left", "{A} to the left of {B}", "{B} to the right of {A}"; rows:
"at the top / at the bottom", "above", "below"), noun synonyms ("sneaker" / "trainer"), and count
words that must agree with the noun ("a sandal", "an ankle boot", "one bag", "two pairs of
trousers"). Five distinct valid captions, drawn at random, are the image's references (COCO has
five too); exact match and token accuracy compare with the whole valid set, which is stored as the
image's ``layout`` and expanded by :func:`valid_captions`. All randomness comes from
``numpy.random.default_rng([seed, split])``: the same seed writes the same bytes.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import os
import pathlib
import re
import shutil
from collections.abc import Iterable, Sequence

import ml_collections
import numpy as np
from PIL import Image

from didiff_jax.checks import InputError, MissingInputError
from didiff_jax.data import augment, fashion_mnist

PAD, END, UNK = "<pad>", "<end>", "<unk>"
SPECIALS = (PAD, END, UNK)
PAD_ID, END_ID, UNK_ID = 0, 1, 2
DATA_NAMES = ("fashion_grid", "coco_captions")
SPLIT_DIRS = {"train": "train2017", "test": "val2017"}  # COCO's names; "test" reads val2017

_WORD = re.compile(r"[a-z0-9]+")


def normalize(text: str) -> list[str]:
    """The words of ``text``: lower case, runs of ``[a-z0-9]`` (punctuation and hyphens split)."""
    return _WORD.findall(text.lower())


# ------------------------------------------------------------------------------------ tokenizer


class Tokenizer:
    """Word-level vocabulary: ``<pad>`` = 0, ``<end>`` = 1, ``<unk>`` = 2, then ``words``."""

    def __init__(self, words: Sequence[str]):
        words = tuple(words)
        clash = set(words) & set(SPECIALS)
        if clash:
            raise ValueError(f"vocabulary words may not be special tokens: {sorted(clash)}")
        self.vocab: tuple[str, ...] = SPECIALS + words
        self.index = {w: i for i, w in enumerate(self.vocab)}
        if len(self.index) != len(self.vocab):
            raise ValueError("vocabulary words must be distinct")

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, seq_len: int) -> np.ndarray:
        """int32 [seq_len]: the words (at most ``seq_len - 1``; unknown ones ``<unk>``), ``<end>``,
        then ``<pad>``."""
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (a word and <end>), got {seq_len}")
        ids = [self.index.get(w, UNK_ID) for w in normalize(text)][: seq_len - 1]
        out = np.full(seq_len, PAD_ID, np.int32)
        out[: len(ids)] = ids
        out[len(ids)] = END_ID
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """The words before the first ``<end>``; ``<pad>`` is skipped, ``<unk>`` kept as is."""
        words = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            if i != PAD_ID:
                words.append(self.vocab[i])
        return " ".join(words)

    def render(self, ids: Iterable[int], mask_id: int | None = None) -> str:
        """Every position, for trajectories: specials shown, the MDD mask as ``[M]``, trailing
        ``<pad>`` dropped."""
        shown = ["[M]" if mask_id is not None and int(i) == mask_id else self.vocab[int(i)]
                 for i in ids]  # fmt: skip
        while shown and shown[-1] == PAD:
            shown.pop()
        return " ".join(shown)


def build_tokenizer(captions: Iterable[str], vocab_size: int = 0, min_count: int = 1) -> Tokenizer:
    """The vocabulary of ``captions``: words seen ``>= min_count`` times, most frequent first (ties
    alphabetical), at most ``vocab_size`` of them (0: no limit); the specials come on top."""
    counts = collections.Counter(w for c in captions for w in normalize(c))
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    if vocab_size:
        words = words[:vocab_size]
    if not words:
        raise ValueError(f"no word occurs {min_count}+ times in the training captions")
    return Tokenizer(words)


# --------------------------------------------------------------------------------- COCO format


def annotation_path(root: str | os.PathLike, split: str) -> pathlib.Path:
    return pathlib.Path(root) / "annotations" / f"captions_{SPLIT_DIRS[split]}.json"


def read_coco_captions(path: str | os.PathLike) -> tuple[list[dict], dict[int, list[str]]]:
    """(image entries with at least one caption, ``image id -> captions``) of a COCO captions file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise MissingInputError(
            f"{path} not found: a COCO captions root holds annotations/captions_train2017.json, "
            "annotations/captions_val2017.json, train2017/ and val2017/"
        )
    try:
        data = json.loads(path.read_text())
        images, annotations = data["images"], data["annotations"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a COCO captions file (needs 'images' and 'annotations'; "
                         f"{type(e).__name__}: {e})") from None  # fmt: skip
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise InputError(f"{path}: 'images' and 'annotations' must be lists")
    by_id: dict[int, list[str]] = collections.defaultdict(list)
    ids = set()
    for entry in images:
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            raise InputError(f"{path}: image entry without 'id'/'file_name': {entry}")
        if not isinstance(entry["file_name"], str) or not entry["file_name"]:
            raise InputError(f"{path}: image {entry['id']} has file_name {entry['file_name']!r}, "
                             "expected a file name")  # fmt: skip
        if entry["id"] in ids:  # two files under one id would share (and mix) their captions
            raise InputError(f"{path}: image id {entry['id']} appears twice in 'images'")
        ids.add(entry["id"])
    for a in annotations:
        if not isinstance(a, dict) or "image_id" not in a or "caption" not in a:
            raise InputError(f"{path}: annotation without 'image_id'/'caption': {a}")
        if a["image_id"] not in ids:
            raise InputError(
                f"{path}: annotation {a.get('id')} names unknown image {a['image_id']}"
            )
        if not isinstance(a["caption"], str):
            raise InputError(f"{path}: annotation {a.get('id')} has caption {a['caption']!r}, "
                             "expected a string")  # fmt: skip
        by_id[a["image_id"]].append(a["caption"])
    kept = sorted((e for e in images if by_id.get(e["id"])), key=lambda e: e["id"])
    if not kept:
        raise InputError(f"{path}: no image has a caption")
    return kept, dict(by_id)


class CaptionSource:
    """Random access over one split of a COCO-format caption set.

    ``per="caption"`` (training): one record per (image, caption) pair,
    ``{"image": uint8 [H, W, C], "tokens": int32 [N]}``. ``per="image"`` (evaluation): one record
    per image, ``{"image", "tokens" (its first reference), "index": int32}``; ``references(i)`` are
    the captions, ``targets(i)`` the captions that count as exactly right (the references, or every
    valid caption on the Fashion-grid task).
    """

    def __init__(self, root: str | os.PathLike, split: str, tokenizer: Tokenizer, seq_len: int, *,
                 channels: int = 3, per: str = "caption"):  # fmt: skip
        if per not in ("caption", "image"):
            raise ValueError(f"per must be 'caption' or 'image', got {per!r}")
        self.root, self.split, self.per = pathlib.Path(root), split, per
        self.tokenizer, self.seq_len, self.channels = tokenizer, seq_len, channels
        self.images, captions = read_coco_captions(annotation_path(root, split))
        self.image_dir = self.root / SPLIT_DIRS[split]
        missing = [
            e["file_name"] for e in self.images if not (self.image_dir / e["file_name"]).is_file()
        ]
        if missing:
            raise MissingInputError(f"{len(missing)} image files listed in "
                                    f"{annotation_path(root, split)} are missing from "
                                    f"{self.image_dir}, e.g. {missing[:3]}")  # fmt: skip
        self.captions = [captions[e["id"]] for e in self.images]
        self.pairs = np.array([(i, j) for i, cs in enumerate(self.captions)
                               for j in range(len(cs))], np.int64)  # fmt: skip

    def __len__(self) -> int:
        return len(self.pairs) if self.per == "caption" else len(self.images)

    def path(self, i: int) -> pathlib.Path:
        """The image file of image ``i``."""
        return self.image_dir / self.images[i]["file_name"]

    def references(self, i: int) -> list[str]:
        return self.captions[i]

    def targets(self, i: int) -> list[str]:
        layout = self.images[i].get("layout")
        return valid_captions(layout) if layout is not None else self.captions[i]

    def __getitem__(self, k: int) -> dict:
        i, j = self.pairs[k] if self.per == "caption" else (k, 0)
        record = {"image": augment.read_image(self.path(int(i)), self.channels),
                  "tokens": self.tokenizer.encode(self.captions[i][j], self.seq_len)}  # fmt: skip
        if self.per == "image":
            record["index"] = np.int32(i)
        return record


# ------------------------------------------------------------------------- the Fashion-grid task

CELL = 28  # a Fashion-MNIST item
GRID = 2  # 2 x 2 cells: 56 x 56 images

# Class -> synonyms, each (singular, plural). Fashion-MNIST's order.
NOUNS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("top", "tops"), ("tee", "tees")),  # T-shirt/top
    (("pair of trousers", "pairs of trousers"), ("pair of pants", "pairs of pants")),  # Trouser
    (("pullover", "pullovers"), ("sweater", "sweaters")),  # Pullover
    (("dress", "dresses"),),  # Dress
    (("coat", "coats"), ("jacket", "jackets")),  # Coat
    (("sandal", "sandals"),),  # Sandal
    (("shirt", "shirts"),),  # Shirt
    (("sneaker", "sneakers"), ("trainer", "trainers")),  # Sneaker
    (("bag", "bags"), ("handbag", "handbags")),  # Bag
    (("ankle boot", "ankle boots"), ("boot", "boots")),  # Ankle boot
)
TEMPLATES = {
    "columns": ("{A} on the left and {B} on the right", "{B} on the right and {A} on the left",
                "{A} to the left of {B}", "{B} to the right of {A}"),
    "rows": ("{A} at the top and {B} at the bottom", "{B} at the bottom and {A} at the top",
             "{A} above {B}", "{B} below {A}"),
}  # fmt: skip
GRID_MEAN, GRID_STD = (0.215,), (0.330,)  # pixel statistics of the generated training images


def noun_phrases(cls: int, count: int) -> list[str]:
    """Every way to say ``count`` (1 or 2) items of class ``cls``: "a sandal", "one sandal",
    "an ankle boot", "two pairs of trousers", ..."""
    phrases = []
    for singular, plural in NOUNS[cls]:
        if count == 1:
            article = "an" if singular[0] in "aeiou" else "a"
            phrases += [f"{article} {singular}", f"one {singular}"]
        else:
            phrases.append(f"two {plural}")
    return phrases


def valid_captions(layout: dict) -> list[str]:
    """All captions that describe ``layout`` (``{"split": "columns"|"rows", "classes": [A, B],
    "counts": [nA, nB], ...}``), in a fixed order."""
    (a, b), (na, nb) = layout["classes"], layout["counts"]
    return [t.format(A=pa, B=pb) for t in TEMPLATES[layout["split"]]
            for pa, pb in itertools.product(noun_phrases(a, na), noun_phrases(b, nb))]  # fmt: skip


@functools.cache
def fashion_grid_language() -> frozenset[str]:
    """Every caption that is valid for some layout (the task's whole language, 18,576 sentences):
    a sampled caption outside it is ill-formed, whatever the image."""
    return frozenset(
        c
        for split in TEMPLATES
        for classes in itertools.permutations(range(len(NOUNS)), 2)
        for counts in itertools.product((1, 2), (1, 2))
        for c in valid_captions({"split": split, "classes": list(classes), "counts": list(counts)})
    )


def sample_layout(rng: np.random.Generator) -> dict:
    """A random layout: the split, two distinct classes, a count (1-2) per class, and the cells
    ``[row, col, class]`` of the items (A in column/row 0, B in column/row 1)."""
    split = ("columns", "rows")[rng.integers(2)]
    a, b = (int(c) for c in rng.choice(len(NOUNS), size=2, replace=False))
    counts = [int(n) for n in rng.integers(1, 3, size=2)]
    shared = int(rng.integers(GRID))  # the row (columns) / column (rows) of single items
    cells = []
    for group, (cls, n) in enumerate(((a, counts[0]), (b, counts[1]))):
        lines = range(GRID) if n == 2 else [shared if counts == [1, 1] else int(rng.integers(GRID))]
        for line in lines:
            cells.append([line, group, cls] if split == "columns" else [group, line, cls])
    return {"split": split, "classes": [a, b], "counts": counts, "cells": cells}


class _ItemQueues:
    """Per class, the split's items in a seeded random order; refilled (reshuffled) when used up,
    so items repeat only after every item of the class has appeared."""

    def __init__(self, labels: np.ndarray, rng: np.random.Generator):
        self.rng = rng
        self.pools = [np.flatnonzero(labels == c) for c in range(len(NOUNS))]
        self.queues: list[list[int]] = [[] for _ in self.pools]

    def pop(self, cls: int) -> int:
        if not self.queues[cls]:
            self.queues[cls] = [int(i) for i in self.rng.permutation(self.pools[cls])]
        return self.queues[cls].pop()


def _generate_split(images: np.ndarray, labels: np.ndarray, split: str, num: int, seed: int,
                    refs_per_image: int, image_dir: pathlib.Path) -> dict:  # fmt: skip
    """Write ``num`` composite PNGs of ``split`` into ``image_dir``; return the COCO JSON dict."""
    rng = np.random.default_rng([seed, list(SPLIT_DIRS).index(split)])
    queues = _ItemQueues(labels, rng)
    source_split = "train" if split == "train" else "test"
    entries, annotations = [], []
    image_dir.mkdir(parents=True)
    for k in range(num):
        layout = sample_layout(rng)
        canvas = np.zeros((GRID * CELL, GRID * CELL), np.uint8)
        items = []
        for r, c, cls in layout["cells"]:
            i = queues.pop(cls)
            canvas[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = images[i, :, :, 0]
            items.append({"split": source_split, "index": i, "cell": [r, c]})
        image_id = k + 1
        file_name = f"{image_id:012d}.png"
        Image.fromarray(canvas).save(image_dir / file_name)
        entries.append({"id": image_id, "file_name": file_name, "height": GRID * CELL,
                        "width": GRID * CELL, "layout": layout, "items": items})  # fmt: skip
        valid = valid_captions(layout)
        chosen = rng.choice(len(valid), size=min(refs_per_image, len(valid)), replace=False)
        for j in chosen:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "caption": valid[int(j)]}
            )
    return {"images": entries, "annotations": annotations}


def generate_fashion_grid(out_dir: str | os.PathLike, *, seed: int = 0, num_train: int = 12000,
                          num_test: int = 1000, refs_per_image: int = 5,
                          fashion_dir: str | None = None) -> pathlib.Path:  # fmt: skip
    """Write the Fashion-grid caption set to ``out_dir`` in the COCO layout (see the module
    docstring) and return it; an existing complete set with the same parameters is reused.

    Deterministic: the same arguments give the same files, byte for byte. The set is written to a
    temporary sibling and renamed into place, so concurrent writers cannot leave a partial set.
    """
    out = pathlib.Path(out_dir)
    params = {"generator": "fashion_grid", "seed": seed, "num_train": num_train,
              "num_test": num_test, "refs_per_image": refs_per_image}  # fmt: skip
    if out.exists():
        _check_generated(out, params)
        return out
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "annotations").mkdir(parents=True)
        for split, num in (("train", num_train), ("test", num_test)):
            images, labels = fashion_mnist.load(
                "train" if split == "train" else "test", fashion_dir
            )
            data = _generate_split(images, labels, split, num, seed, refs_per_image,
                                   tmp / SPLIT_DIRS[split])  # fmt: skip
            data["info"] = {**params, "description": "Fashion-MNIST 2x2 grid captions "
                            "(didiff_jax.data.captions.generate_fashion_grid)"}  # fmt: skip
            annotation_path(tmp, split).write_text(json.dumps(data))
        try:
            tmp.rename(out)
        except OSError:  # another process finished first
            if not out.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _check_generated(out, params)
    return out


def _check_generated(out: pathlib.Path, params: dict) -> None:
    for split in SPLIT_DIRS:
        path = annotation_path(out, split)
        try:
            info = json.loads(path.read_text()).get("info", {})
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{out} exists but is not a complete Fashion-grid set ({e}); "
                             "delete it to regenerate") from None  # fmt: skip
        got = {k: info.get(k) for k in params}
        if got != params:
            raise InputError(f"{path} was generated with {got}, the config asks for {params}; "
                             "use another data.root or delete it")  # fmt: skip


# ---------------------------------------------------------------------- config-level entry points


def default_cache_dir() -> pathlib.Path:
    """``$DIDIFF_DATA_DIR`` or ``~/.cache/didiff_jax``: where generated data sets go."""
    return pathlib.Path(
        os.environ.get("DIDIFF_DATA_DIR") or pathlib.Path.home() / ".cache" / "didiff_jax"
    )


def data_root(cfg: ml_collections.ConfigDict) -> pathlib.Path:
    """The COCO-format root of ``cfg``; for ``fashion_grid`` it is generated on first use."""
    if cfg.name == "coco_captions":
        check_root(cfg, ())
        return pathlib.Path(cfg.root)
    if cfg.name != "fashion_grid":
        raise ValueError(f"caption data.name must be one of {DATA_NAMES}, got {cfg.name!r}")
    root = cfg.get("root") or default_cache_dir() / (
        f"fashion_grid_s{cfg.generator_seed}_{cfg.num_train}_{cfg.num_test}_r{cfg.refs_per_image}"
    )
    return generate_fashion_grid(root, seed=cfg.generator_seed, num_train=cfg.num_train,
                                 num_test=cfg.num_test, refs_per_image=cfg.refs_per_image,
                                 fashion_dir=cfg.get("data_dir") or None)  # fmt: skip


COCO_LAYOUT = ("DIR/annotations/captions_{train,val}2017.json, DIR/train2017/, "
               "DIR/val2017/")  # fmt: skip


def check_root(cfg: ml_collections.ConfigDict, splits: Sequence[str] = tuple(SPLIT_DIRS)) -> None:
    """For ``coco_captions``: ``MissingInputError`` unless ``data.root`` is a directory holding the
    annotation file and image folder of each of ``splits``. Reads no file, so it runs before a
    run starts (the evaluation split's files are then known to exist before training). The
    Fashion-grid set is generated, and checked, on first use."""
    if cfg.name != "coco_captions":
        return
    if not cfg.get("root"):
        raise InputError(f"data.name='coco_captions' needs --config.data.root=DIR ({COCO_LAYOUT})")
    root = pathlib.Path(cfg.root)
    if not root.is_dir():
        raise MissingInputError(f"data.root={cfg.root}: no such directory (expected {COCO_LAYOUT})")
    for split in splits:
        for path in (annotation_path(root, split), root / SPLIT_DIRS[split]):
            if not path.exists():
                raise MissingInputError(f"data.root={cfg.root} has no {path.relative_to(root)} "
                                        f"(needed for the {split!r} split; expected {COCO_LAYOUT})")  # fmt: skip


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(path: str, mtime: float, vocab_size: int, min_count: int) -> Tokenizer:
    _, captions = read_coco_captions(path)
    return build_tokenizer((c for cs in captions.values() for c in cs), vocab_size, min_count)


def tokenizer_for(cfg: ml_collections.ConfigDict) -> Tokenizer:
    """The tokenizer of ``cfg``'s training captions (``data.vocab_size``, ``data.min_count``)."""
    path = annotation_path(data_root(cfg), "train")
    if not path.is_file():
        read_coco_captions(path)  # raises the explanatory error
    return _cached_tokenizer(str(path), path.stat().st_mtime, int(cfg.get("vocab_size", 0)),
                             int(cfg.get("min_count", 1)))  # fmt: skip


def load_source(cfg: ml_collections.ConfigDict, split: str) -> CaptionSource:
    """Training split: one record per caption; 'test' (COCO's val2017): one record per image."""
    if split not in SPLIT_DIRS:
        raise InputError(f"caption split must be 'train' or 'test', got {split!r}")
    return CaptionSource(data_root(cfg), split, tokenizer_for(cfg), int(cfg.seq_len),
                         channels=int(cfg.channels),
                         per="caption" if split == "train" else "image")  # fmt: skip


def mean_std(cfg: ml_collections.ConfigDict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if cfg.name == "fashion_grid":
        return GRID_MEAN, GRID_STD
    return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's, for COCO photographs
