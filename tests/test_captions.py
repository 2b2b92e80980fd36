"""Captioning: tokenizer, COCO-format sources, the Fashion-grid generator, BLEU/CIDEr-D against
hand-computed values, the TDD and MDD sequence samplers with exact oracles, and the four caption
configs end to end (train, checkpoint, resume, evaluate)."""

import itertools
import json
import math
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import (
    coco_captions_mdd,
    coco_captions_tdd,
    fashion_grid_captions_mdd,
    fashion_grid_captions_tdd,
)
from didiff_jax import caption_metrics, main, samplers
from didiff_jax.checks import InputError, MissingInputError
from didiff_jax.data import captions, fashion_mnist, pipeline
from didiff_jax.diffusion import CosineAbar

needs_fashion = pytest.mark.skipif(
    not pathlib.Path(fashion_mnist.DEBIAN_DIR).is_dir()
    and "DIDIFF_FASHION_MNIST" not in os.environ,
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)

# ------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_vocabulary_round_trip_and_padding():
    tok = captions.build_tokenizer(
        ["A cat sat.", "a cat ran", "The dog, the cat!", "a zebra"], min_count=2
    )
    # Specials first, then words seen twice or more by frequency, ties alphabetical.
    assert tok.vocab == ("<pad>", "<end>", "<unk>", "a", "cat", "the")
    assert len(captions.build_tokenizer(["a a b b c"], vocab_size=2)) == 5  # a, b + 3 specials
    ids = tok.encode("The cat, a cat", 8)
    np.testing.assert_array_equal(ids, [5, 4, 3, 4, 1, 0, 0, 0])
    assert tok.decode(ids) == "the cat a cat"
    assert tok.decode(tok.encode("the zebra sat", 8)) == "the <unk> <unk>"
    # Truncation keeps the end token in the last position.
    np.testing.assert_array_equal(tok.encode("a cat a cat a cat", 4), [3, 4, 3, 1])
    assert tok.render([3, 6, 1, 0, 0], mask_id=6) == "a [M] <end>"
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        tok.encode("a", 1)
    with pytest.raises(ValueError, match="no word occurs 9"):
        captions.build_tokenizer(["a b"], min_count=9)


# ------------------------------------------------------------------------------- the generator


@pytest.fixture(scope="module")
def grid_root(tmp_path_factory):
    """The smoke configs' Fashion-grid set (48 train / 16 test images), generated once."""
    if (
        not pathlib.Path(fashion_mnist.DEBIAN_DIR).is_dir()
        and "DIDIFF_FASHION_MNIST" not in os.environ
    ):
        pytest.skip("Fashion-MNIST not installed")
    root = tmp_path_factory.mktemp("grid") / "set"
    return captions.generate_fashion_grid(root, seed=0, num_train=48, num_test=16)


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _readings(cells: list[list[int]]) -> list[dict]:
    """Every (split, classes, counts) that the occupied cells support: a split reads the two
    lines (columns or rows) as two groups, each non-empty and of a single class, and different."""
    out = []
    for split in ("columns", "rows"):
        groups = [
            [cls for r, c, cls in cells if (c if split == "columns" else r) == g] for g in (0, 1)
        ]
        if all(groups) and all(len(set(g)) == 1 for g in groups) and groups[0][0] != groups[1][0]:
            out.append({"split": split, "classes": [g[0] for g in groups],
                        "counts": [len(g) for g in groups]})  # fmt: skip
    return out


@needs_fashion
def test_fashion_grid_is_deterministic_real_and_disjoint(grid_root, tmp_path):
    again = captions.generate_fashion_grid(tmp_path / "again", seed=0, num_train=48, num_test=16)
    assert _files(again) == _files(grid_root)  # same seed: the same bytes
    other = captions.generate_fashion_grid(tmp_path / "other", seed=1, num_train=48, num_test=16)
    assert _files(other) != _files(grid_root)
    with pytest.raises(ValueError, match="generated with"):
        captions.generate_fashion_grid(grid_root, seed=1, num_train=48, num_test=16)

    sources = {s: fashion_mnist.load(s)[0] for s in ("train", "test")}
    used = {}
    for split, source_split in (("train", "train"), ("test", "test")):
        data = json.loads(captions.annotation_path(grid_root, split).read_text())
        refs = {}
        for a in data["annotations"]:
            refs.setdefault(a["image_id"], []).append(a["caption"])
        for entry in data["images"]:
            image = np.asarray(
                Image.open(grid_root / captions.SPLIT_DIRS[split] / entry["file_name"])
            )
            assert image.shape == (56, 56)
            occupied = np.zeros((2, 2), bool)
            for item in entry["items"]:
                assert item["split"] == source_split
                r, c = item["cell"]
                occupied[r, c] = True
                np.testing.assert_array_equal(image[28 * r : 28 * r + 28, 28 * c : 28 * c + 28],
                                              sources[source_split][item["index"], :, :, 0])  # fmt: skip
            assert not image[~np.repeat(np.repeat(occupied, 28, 0), 28, 1)].any()  # empty cells
            layout = entry["layout"]
            # The picture admits exactly one reading, the layout's: captions are never ambiguous.
            assert _readings(layout["cells"]) == [
                {k: layout[k] for k in ("split", "classes", "counts")}
            ]
            valid = captions.valid_captions(layout)
            assert len(refs[entry["id"]]) == min(5, len(valid))  # distinct references
            assert len(set(refs[entry["id"]])) == len(refs[entry["id"]])
            assert set(refs[entry["id"]]) <= set(valid)
        used[split] = {(i["split"], i["index"]) for e in data["images"] for i in e["items"]}
    assert used["train"] and used["test"] and not used["train"] & used["test"]


def test_valid_caption_sets_of_different_layouts_are_disjoint_and_agree():
    seen: dict[str, tuple] = {}
    for split, (a, b), (na, nb) in itertools.product(
        ("columns", "rows"), itertools.permutations(range(10), 2), itertools.product((1, 2), (1, 2))
    ):
        layout = {"split": split, "classes": [a, b], "counts": [na, nb]}
        valid = captions.valid_captions(layout)
        assert (
            len(valid) == len(set(valid)) and max(len(captions.normalize(v)) for v in valid) <= 15
        )
        for caption in valid:
            assert caption not in seen, f"{caption!r} describes {seen.get(caption)} and {layout}"
            seen[caption] = (split, a, b, na, nb)
    assert set(seen) == captions.fashion_grid_language()
    # Agreement: articles and plurals follow the count.
    assert "an ankle boot above two pairs of trousers" in seen
    assert "a ankle boot above two pairs of trousers" not in seen
    assert "two pair of trousers on the left and one bag on the right" not in seen


# ---------------------------------------------------------------------------------- COCO format


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """A tiny COCO-format caption set: real JPEG photos-to-be (noise), the two JSON files."""
    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(0)
    words = ["a", "red", "blue", "cat", "dog", "on", "the", "mat", "sofa", "sleeps"]
    for split, n in (("train", 6), ("test", 3)):
        (root / captions.SPLIT_DIRS[split]).mkdir(parents=True)
        images, annotations = [], []
        for i in range(n):
            name = f"{i:012d}.jpg"
            pixels = rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)
            mode = "L" if i == 1 else "RGB"  # COCO has a few grayscale JPEGs
            Image.fromarray(pixels).convert(mode).save(root / captions.SPLIT_DIRS[split] / name)
            images.append({"id": 100 + i, "file_name": name, "height": 40 + 4 * i, "width": 48})
            for _ in range(2 + i % 2):
                caption = " ".join(rng.choice(words, size=rng.integers(3, 8))).capitalize() + "."
                annotations.append(
                    {"id": len(annotations), "image_id": 100 + i, "caption": caption}
                )
        images.append({"id": 999, "file_name": "uncaptioned.jpg"})  # no caption: skipped
        (root / "annotations").mkdir(exist_ok=True)
        captions.annotation_path(root, split).write_text(
            json.dumps({"images": images, "annotations": annotations})
        )
    return root


def test_coco_source_records_and_errors(coco_root, tmp_path):
    cfg = coco_captions_tdd.get_config("smoke").data
    cfg.root = str(coco_root)
    info = pipeline.dataset_info(cfg)
    tok = captions.tokenizer_for(cfg)
    assert info.num_classes == len(tok) and info.class_names == tok.vocab
    assert info.image_shape == (32, 32, 3)
    train_src = pipeline.load_source(cfg, "train")
    test_src = pipeline.load_source(cfg, "test")
    assert len(train_src) == 2 + 3 + 2 + 3 + 2 + 3  # one record per caption
    assert len(test_src) == 3  # one per captioned image
    r = train_src[3]  # the second caption of image 1 (grayscale, read as RGB)
    assert r["image"].shape == (44, 48, 3) and r["image"].dtype == np.uint8
    assert tok.decode(r["tokens"]) == " ".join(captions.normalize(train_src.captions[1][1]))
    t = test_src[2]
    assert int(t["index"]) == 2 and test_src.targets(2) == test_src.references(2)
    batch = next(iter(pipeline.eval_dataset(cfg, info, split="test", global_batch_size=4,
                                            source=test_src)))  # fmt: skip
    assert batch["image"].shape == (4, 32, 32, 3) and batch["tokens"].shape == (4, 12)
    np.testing.assert_array_equal(batch["index"], [0, 1, 2, 0])
    np.testing.assert_array_equal(batch["mask"], [True, True, True, False])

    broken = tmp_path / "broken"
    (broken / "annotations").mkdir(parents=True)
    captions.annotation_path(broken, "train").write_text('{"images": []}')
    with pytest.raises(ValueError, match="captions_train2017.json: not a COCO captions file"):
        captions.read_coco_captions(captions.annotation_path(broken, "train"))
    with pytest.raises(FileNotFoundError, match="captions_val2017.json not found"):
        captions.CaptionSource(broken, "test", tok, 12)
    (broken / "val2017").mkdir()
    captions.annotation_path(broken, "test").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "gone.jpg"}],
         "annotations": [{"id": 1, "image_id": 1, "caption": "a cat"}]}))  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"1 image files .* missing .*gone\.jpg"):
        captions.CaptionSource(broken, "test", tok, 12)
    cfg.root = ""
    with pytest.raises(ValueError, match="needs --config.data.root"):
        pipeline.load_source(cfg, "train")


def test_coco_annotations_that_do_not_match_fail_naming_the_file(coco_root, tmp_path):
    """Mismatched annotation files and a missing evaluation split fail before a run starts."""
    path = tmp_path / "captions.json"
    entries = [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}]
    path.write_text(json.dumps({"images": entries, "annotations": []}))
    with pytest.raises(InputError, match=r"captions\.json: image id 1 appears twice in 'images'"):
        captions.read_coco_captions(path)
    path.write_text(json.dumps({"images": entries[:1],
                                "annotations": [{"id": 7, "image_id": 1, "caption": None}]}))  # fmt: skip
    with pytest.raises(InputError, match=r"annotation 7 has caption None, expected a string"):
        captions.read_coco_captions(path)
    path.write_text(json.dumps({"images": entries[:1],
                                "annotations": [{"id": 8, "image_id": 2, "caption": "a cat"}]}))  # fmt: skip
    with pytest.raises(InputError, match=r"captions\.json: annotation 8 names unknown image 2"):
        captions.read_coco_captions(path)
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": ""}], "annotations": []}))
    with pytest.raises(InputError, match=r"image 1 has file_name '', expected a file name"):
        captions.read_coco_captions(path)
    cfg = coco_captions_tdd.get_config("smoke").data
    cfg.root = str(tmp_path / "nowhere")
    with pytest.raises(MissingInputError, match=r"^data\.root=.*nowhere: no such directory"):
        pipeline.check_data(cfg)
    copy = tmp_path / "coco"
    shutil.copytree(coco_root, copy)
    cfg.root = str(copy)
    pipeline.check_data(cfg)
    captions.annotation_path(copy, "test").unlink()
    pipeline.check_data(cfg, ("train",))
    with pytest.raises(MissingInputError, match=r"has no annotations/captions_val2017\.json "
                                                r"\(needed for the 'test' split"):  # fmt: skip
        pipeline.check_data(cfg)


# ------------------------------------------------------------------------------------- metrics


def _w(text: str) -> list[str]:
    return text.split()


def test_bleu_against_hand_computed_values():
    ref = _w("the cat sat on the mat")
    assert caption_metrics.corpus_bleu([ref], [[ref]])["bleu4"] == pytest.approx(1.0)
    # p1 = 6/7, p2 = 4/6, p3 = 3/5, p4 = 2/4; longer than the reference: no brevity penalty.
    out = caption_metrics.corpus_bleu([_w("the cat sat on the red mat")], [[ref]])
    assert out["precisions"] == pytest.approx([6 / 7, 4 / 6, 3 / 5, 2 / 4])
    assert out["bleu4"] == pytest.approx((6 / 7 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25)
    assert out["bleu1"] == pytest.approx(6 / 7)
    # All n-grams match but 5 words for a closest reference of 6: BP = exp(1 - 6/5).
    out = caption_metrics.corpus_bleu([_w("the cat sat on the")], [[ref, _w("a b c d e f g h")]])
    assert out["bleu4"] == pytest.approx(math.exp(1 - 6 / 5))
    # Clipping: "the the the" matches "the" at most twice.
    out = caption_metrics.corpus_bleu([_w("the the the")], [[ref]])
    assert out["precisions"][0] == pytest.approx(2 / 3) and out["bleu4"] == 0.0
    # Corpus level: counts are summed before dividing. 6/6 + 1/2 unigrams = 7/8.
    out = caption_metrics.corpus_bleu([ref, _w("dog cat")], [[ref], [_w("the cat")]])
    assert out["precisions"][0] == pytest.approx(7 / 8)


def test_cider_d_against_hand_computed_values():
    refs = [[_w("cat")], [_w("dog")]]
    # idf of each word = log(2 images / 1); identical unigram captions: cosine 1 for n = 1, no
    # n-grams for n = 2..4: the score is 10 * (1 + 0 + 0 + 0) / 4 per image.
    score, per_image = caption_metrics.cider_d([_w("cat"), _w("dog")], refs)
    assert per_image == pytest.approx([2.5, 2.5]) and score == pytest.approx(2.5)
    score, per_image = caption_metrics.cider_d([_w("dog"), _w("dog")], refs)
    assert per_image == pytest.approx([0.0, 2.5]) and score == pytest.approx(1.25)
    # Repetition is clipped (min(2, 1) * 1 / (2 * 1) = 1/2) and the length gap is penalised;
    # the candidate's bigram has no counterpart in the reference.
    _, per_image = caption_metrics.cider_d([_w("cat cat"), _w("dog")], refs)
    assert per_image[0] == pytest.approx(10 * 0.5 * math.exp(-1 / 72) / 4)
    # A word in every image's references carries no information (idf 0).
    score, _ = caption_metrics.cider_d([_w("a"), _w("a")], [[_w("a cat")], [_w("a dog")]])
    assert score == 0.0


def test_token_accuracy_and_exact_match():
    targets = np.array([[5, 6, 7, 1, 0], [5, 8, 1, 0, 0]])
    assert caption_metrics.token_accuracy(np.array([5, 8, 1, 0, 0]), targets) == 1.0
    # Best against the first target: 3 of its 4 non-padding positions (9 != 7); the second: 1/3.
    assert caption_metrics.token_accuracy(np.array([5, 6, 9, 1, 4]), targets) == 0.75
    assert caption_metrics.exact_match(_w("a b"), [_w("c"), _w("a b")])
    assert not caption_metrics.exact_match(_w("a b c"), [_w("a b")])


def test_caption_score_separates_wrong_content_from_ill_formed_text():
    from didiff_jax import captioning

    language = captions.fashion_grid_language()
    tok = captions.build_tokenizer(sorted(language))
    truth = captions.valid_captions({"split": "rows", "classes": [8, 5], "counts": [1, 1]})
    samples = ["a bag above a sandal", "a dress above a sandal", "a bag above above sandal"]
    tokens = np.stack([tok.encode(x, 16) for x in samples])
    out = captioning.score(tok, tokens, [truth[:5]] * 3, [truth] * 3, language)
    assert out["exact_match"] == pytest.approx(1 / 3)  # only the first is right
    assert out["well_formed"] == pytest.approx(2 / 3)  # the second is wrong but well formed
    # Token accuracy over "a bag above a sandal <end>": 6/6, 5/6 ("dress"), 5/6 ("above").
    assert out["token_accuracy"] == pytest.approx((1 + 5 / 6 + 5 / 6) / 3)


# --------------------------------------------------------------------------- samplers, oracles

CAPTIONS = np.array([[1, 2, 3], [1, 5, 6], [4, 2, 6]])  # K = 3 captions, N = 3 tokens
PRIOR = np.array([0.4, 0.3, 0.3])
V = 8
MEMBERS = {tuple(c) for c in CAPTIONS}


def _marginal_logits(post: jax.Array) -> jax.Array:
    """Per-token marginals of a posterior over the captions [B, K] -> logits [B, N, V]."""
    onehots = jax.nn.one_hot(jnp.asarray(CAPTIONS), V)  # [K, N, V]
    return jnp.log(jnp.maximum(jnp.einsum("bk,knv->bnv", post, onehots), 1e-30))


def tdd_oracle(y, t, cond):
    """The exact ``p(x_0,n | y_t)`` when x_0 is one of CAPTIONS with probabilities PRIOR:
    ``p(k | y_t) ∝ pi_k exp(sqrt(abar) <y_t, e_k> / (1 - abar))`` (all e_k have the same norm)."""
    abar = CosineAbar().abar(t)[:, None]  # [B, 1]
    onehots = jax.nn.one_hot(jnp.asarray(CAPTIONS), V)  # [K, N, V]
    inner = jnp.einsum("bnv,knv->bk", y, onehots)  # [B, K]
    post = jax.nn.softmax(jnp.log(PRIOR) + jnp.sqrt(abar) * inner / (1 - abar), axis=-1)
    return _marginal_logits(post)


def mdd_oracle(x, t, cond):
    """The exact ``p(x_0,n | x_t)``: the prior restricted to the captions that agree with every
    revealed token (mask id = V)."""
    agree = jnp.all((x[:, None] == V) | (x[:, None] == jnp.asarray(CAPTIONS)[None]), axis=-1)
    post = PRIOR * agree / jnp.sum(PRIOR * agree, axis=-1, keepdims=True)  # [B, K]
    return _marginal_logits(post)


def target_oracle(target):
    """Logits that know the answer: large on ``target`` [N] when cond = 1, uniform when cond = 0
    (so guidance, which mixes in the null call, must keep it)."""

    def fn(x, t, cond):
        return 20.0 * jax.nn.one_hot(jnp.asarray(target), V)[None] * cond[:, None, None]

    return fn


@pytest.mark.parametrize("steps,guidance", [(1, 1.0), (4, 3.0)])
def test_samplers_recover_a_known_caption_with_an_oracle(steps, guidance):
    target = np.array([3, 7, 2, 1, 0])
    cond, null = jnp.ones(4), jnp.zeros(4)
    guide = dict(guidance_scale=guidance, null_cond=null if guidance != 1.0 else None)
    probs = samplers.onehot_sample(target_oracle(target), cond, jax.random.key(0),
                                   num_classes=V, num_steps=steps, seq_len=5, **guide)  # fmt: skip
    np.testing.assert_array_equal(jnp.argmax(probs, -1), np.tile(target, (4, 1)))
    tokens, _, traj = samplers.masked_sample(
        target_oracle(target), cond, jax.random.key(1), num_classes=V, num_steps=steps,
        seq_len=5, return_trajectory=True, **guide,
    )  # fmt: skip
    np.testing.assert_array_equal(tokens, np.tile(target, (4, 1)))
    traj = np.asarray(traj)  # [S, B, N]: revealed tokens are right and stay revealed
    assert ((traj == V) | (traj == target)).all()
    assert (np.diff((traj == V).sum(-1), axis=0) <= 0).all()


def test_tdd_parallel_decoding_mixes_captions_in_one_step_and_not_in_sixteen():
    cond = jnp.zeros(256)
    one = samplers.onehot_sample(tdd_oracle, cond, jax.random.key(0), num_classes=V,
                                 num_steps=1, seq_len=3)  # fmt: skip
    # At t = 1 the posterior is the prior: each token takes its own most likely word, and the
    # result (1, 2, 6) is none of the captions.
    np.testing.assert_array_equal(jnp.argmax(one, -1), np.tile([1, 2, 6], (256, 1)))
    many = samplers.onehot_sample(tdd_oracle, cond, jax.random.key(0), num_classes=V,
                                  num_steps=16, seq_len=3)  # fmt: skip
    decoded = {tuple(int(v) for v in row) for row in np.asarray(jnp.argmax(many, -1))}
    assert decoded <= MEMBERS and len(decoded) >= 2  # coherent, and not collapsed to one caption


def test_mdd_ancestral_unmasking_with_the_exact_posterior_samples_the_captions():
    cond = jnp.zeros(512)
    one, _ = samplers.masked_sample(mdd_oracle, cond, jax.random.key(0), num_classes=V,
                                    num_steps=1, seq_len=3)  # fmt: skip
    member = np.array([tuple(int(v) for v in r) in MEMBERS for r in np.asarray(one)])
    # One step draws the tokens independently: P(a caption) = .7*.7*.4 + 2 * .7*.3*.6 = 0.448.
    assert abs(member.mean() - 0.448) < 0.07
    many, _ = samplers.masked_sample(mdd_oracle, cond, jax.random.key(0), num_classes=V,
                                     num_steps=1000, seq_len=3)  # fmt: skip
    rows = [tuple(int(v) for v in r) for r in np.asarray(many)]
    assert np.mean([r in MEMBERS for r in rows]) > 0.98  # one token per step: exact joint draws
    freq = [np.mean([r == tuple(c) for r in rows]) for c in CAPTIONS]
    np.testing.assert_allclose(freq, PRIOR, atol=0.07)  # 3+ standard deviations at n = 512


# ------------------------------------------------------------------------- the configs end to end


def _check_outputs(workdir: pathlib.Path, labels: set[str], count: int, grid: bool):
    out = json.loads((workdir / "eval_results.json").read_text())
    records = out["records"]
    assert {r["sampler"] for r in records} == labels
    for r in records:
        assert r["count"] == count and r["condition"] == "clean"
        for k in ("bleu1", "bleu4", "token_accuracy", "exact_match"):
            assert 0.0 <= r[k] <= 1.0
        assert r["cider"] >= 0.0 and r["sample_seconds"] > 0
    if grid:  # another phrasing of the same picture beats a caption of another picture
        assert all(0.0 <= r["well_formed"] <= 1.0 for r in records)
        assert out["baselines"]["reference"]["cider"] > out["baselines"]["shuffled"]["cider"]
    samples = json.loads((workdir / "samples" / "captions.json").read_text())
    assert all(len(v) == min(16, count) for v in samples.values())
    traj = sorted((workdir / "samples").glob("trajectory_*.txt"))
    if grid:  # for the first sampler entry; the COCO smoke variants write none
        assert len(traj) == 1
        lines = traj[0].read_text().splitlines()
        assert lines[0].startswith("image 000000000001.png; references: ")
        assert lines[1].startswith("  step  1/2: ") and lines[2].startswith("  step  2/2: ")
        assert (workdir / "samples" / "000000000001.png").is_file()


def _resume_and_evaluate(config, workdir: pathlib.Path, *, restore: bool):
    """4 steps, a checkpoint; resume to 6; evaluate in-run, or from the checkpoint (--mode eval)."""
    config.eval.after_train = False
    main.train_and_evaluate(config, str(workdir))
    config.num_steps = 6
    config.eval.after_train = not restore
    main.train_and_evaluate(config, str(workdir))
    steps = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    if restore:
        main.evaluate_run(config, str(workdir))


@needs_fashion
@pytest.mark.parametrize(
    "module,labels,restore",
    [
        (fashion_grid_captions_tdd, {"tdd-argmax", "tdd-argmax-g2"}, False),
        (fashion_grid_captions_mdd, {"mdd", "mdd-g2"}, True),
    ],
)
def test_fashion_grid_configs_train_resume_and_evaluate(tmp_path, grid_root, module, labels,
                                                        restore):  # fmt: skip
    config = module.get_config("smoke")
    config.data.root = str(grid_root)
    _resume_and_evaluate(config, tmp_path, restore=restore)
    _check_outputs(tmp_path, labels, count=16, grid=True)
    if restore:  # --mode predict: a caption per readable image, the others named
        bad = tmp_path / "broken.png"
        bad.write_bytes(b"not an image")
        image = grid_root / "val2017" / "000000000001.png"
        results = main.predict(config, str(tmp_path), [str(bad), str(image)])
        assert "broken.png" in results[0]["error"] and isinstance(results[1]["caption"], str)


@pytest.mark.parametrize(
    "module,labels,restore",
    [(coco_captions_tdd, {"tdd-argmax"}, True), (coco_captions_mdd, {"mdd"}, False)],
)
def test_coco_configs_train_resume_and_evaluate(tmp_path, coco_root, module, labels, restore):
    config = module.get_config("smoke")
    config.data.root = str(coco_root)
    _resume_and_evaluate(config, tmp_path, restore=restore)
    _check_outputs(tmp_path, labels, count=3, grid=False)
