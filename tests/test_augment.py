"""Per-example augmentations and batch Mixup/CutMix: shapes, determinism, and exact properties."""

import numpy as np
import pytest

from didiff_jax.data import augment

CHANNELS = [1, 3]


def natural_image(seed: int, h: int = 32, w: int = 32, c: int = 3) -> np.ndarray:
    """A smooth gradient plus texture, [h, w, c] uint8, spanning most of the range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = 40 + 170 * (0.6 * yy + 0.4 * xx)[..., None] * np.linspace(0.7, 1.0, c)
    img = base + rng.normal(0, 20, size=(h, w, c))
    return np.clip(img, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------ deterministic


@pytest.mark.parametrize("c", CHANNELS)
def test_resize_and_eval_transform_shapes(c):
    img = natural_image(0, 40, 60, c)
    out = augment.resize(img, 24)
    assert out.shape == (24, 24, c) and out.dtype == np.uint8
    out = augment.resize(img, (20, 30))
    assert out.shape == (20, 30, c) and out.dtype == np.uint8
    out = augment.resize_for_eval(img, 28)  # short side to 32, then centre 28
    assert out.shape == (28, 28, c) and out.dtype == np.uint8
    crop = augment.center_crop(img, (10, 20))
    np.testing.assert_array_equal(crop, img[15:25, 20:40])


def test_resize_constant_and_antialiased():
    const = np.full((64, 64, 3), 77, np.uint8)
    np.testing.assert_array_equal(augment.resize(const, 17), np.full((17, 17, 3), 77, np.uint8))
    # A 1-px checkerboard shrunk 4x: antialiasing averages it to flat grey (no aliasing).
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[..., None]
    small = augment.resize(checker, 16).astype(np.float64)
    assert abs(small.mean() - 127.5) < 2 and small.std() < 3


def test_resize_for_eval_matches_manual():
    img = natural_image(1, 50, 40, 3)
    want = augment.center_crop(augment.resize(img, (int(36 * 50 / 40), 36)), 32)
    np.testing.assert_array_equal(augment.resize_for_eval(img, 32, crop_pct=32 / 36), want)


# ------------------------------------------------------------------------------ random, per example


def _randoms():
    """Every random per-example op, as fn(image, rng)."""
    return {
        "rrc": lambda x, r: augment.random_resized_crop(x, 24, r),
        "flip": lambda x, r: augment.random_flip(x, r),
        "pad_crop": lambda x, r: augment.random_crop_with_padding(x, r, padding=4),
        "jitter": lambda x, r: augment.color_jitter(x, r),
        "randaug": lambda x, r: augment.rand_augment(x, r, num_ops=2, magnitude=9),
    }


@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("name", ["rrc", "flip", "pad_crop", "jitter", "randaug"])
def test_random_ops_shape_determinism_and_seed_dependence(name, c):
    img = natural_image(2, 28, 28, c)
    fn = _randoms()[name]
    out = fn(img, np.random.default_rng(123))
    want_hw = (24, 24) if name == "rrc" else (28, 28)
    assert out.shape == (*want_hw, c) and out.dtype == np.uint8
    # The same seed gives the same output; the input is never modified.
    before = img.copy()
    np.testing.assert_array_equal(fn(img, np.random.default_rng(123)), out)
    np.testing.assert_array_equal(img, before)
    # Some other seed gives a different output.
    outs = [fn(img, np.random.default_rng(s)) for s in range(10)]
    assert any(not np.array_equal(o, out) for o in outs)


def test_global_rng_untouched():
    np.random.seed(0)  # noqa: NPY002 - the legacy global state is what we check
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    img = natural_image(3)
    rng = np.random.default_rng(0)
    augment.rand_augment(img, rng)
    augment.random_resized_crop(img, 16, rng)
    augment.color_jitter(img, rng)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002


@pytest.mark.parametrize("c", CHANNELS)
def test_random_resized_crop_full_square_equals_resize(c):
    img = natural_image(4, 40, 40, c)
    for seed in range(3):
        out = augment.random_resized_crop(
            img, 24, np.random.default_rng(seed), scale=(1.0, 1.0), ratio=(1.0, 1.0)
        )
        np.testing.assert_array_equal(out, augment.resize(img, 24))


def test_random_resized_crop_fallback_is_central_crop():
    # scale > 1 never fits, so all 10 attempts fail; a 20x60 image with ratio <= 4/3 falls back
    # to the central 20x27 window.
    img = natural_image(5, 20, 60, 3)
    out = augment.random_resized_crop(img, 16, np.random.default_rng(0), scale=(2.0, 3.0))
    np.testing.assert_array_equal(out, augment.resize(img[:, 16:43], 16))


@pytest.mark.parametrize("c", CHANNELS)
def test_flip_twice_is_identity(c):
    img = natural_image(6, 28, 28, c)
    once = augment.random_flip(img, np.random.default_rng(0), p=1.0)
    np.testing.assert_array_equal(once, img[:, ::-1])
    np.testing.assert_array_equal(augment.random_flip(once, np.random.default_rng(1), p=1.0), img)
    np.testing.assert_array_equal(augment.random_flip(img, np.random.default_rng(0), p=0.0), img)


def test_random_crop_with_padding_is_a_translation():
    img = natural_image(7, 28, 28, 1)
    for seed in range(10):
        out = augment.random_crop_with_padding(img, np.random.default_rng(seed), padding=4)
        padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
        hits = [
            (t, l)
            for t in range(9)
            for l in range(9)
            if np.array_equal(padded[t : t + 28, l : l + 28], out)
        ]
        assert hits


def test_color_jitter_grayscale_and_zero_strength():
    img = natural_image(8, 28, 28, 1)
    out = augment.color_jitter(img, np.random.default_rng(0), brightness=0, contrast=0)
    np.testing.assert_array_equal(out, img)  # only saturation left: a no-op for C = 1
    rgb = natural_image(8, 28, 28, 3)
    out = augment.color_jitter(rgb, np.random.default_rng(0), 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("op", augment.RAND_AUGMENT_OPS)
def test_every_rand_augment_op(op, c):
    img = natural_image(9, 28, 28, c)
    out = augment.apply_rand_augment_op(img, op, 9.0, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8
    if op not in ("AutoContrast", "Color"):  # those may be no-ops on this image / on C = 1
        assert not np.array_equal(out, img), op


def test_rand_augment_unknown_op():
    with pytest.raises(ValueError, match="valid"):
        augment.apply_rand_augment_op(natural_image(0), "Blur", 5.0, np.random.default_rng(0))


@pytest.mark.parametrize("c", CHANNELS)
def test_rand_augment_changes_image_usually(c):
    img = natural_image(10, 28, 28, c)
    changed = [
        not np.array_equal(augment.rand_augment(img, np.random.default_rng(s), 2, 9, 0.5), img)
        for s in range(60)
    ]
    # Each of 2 ops fires with prob 0.5, so P(change) is about 0.75 (minus rare no-op ops).
    assert np.mean(changed) > 0.6
    never = augment.rand_augment(img, np.random.default_rng(0), num_ops=0)
    np.testing.assert_array_equal(never, img)


# ------------------------------------------------------------------------------ targets, per batch


def test_one_hot_smooth():
    labels = np.array([0, 3, 9, 3])
    t = augment.one_hot_smooth(labels, 10, 0.1)
    assert t.shape == (4, 10) and t.dtype == np.float32
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t.max(1), 0.9 + 0.01, rtol=1e-6)
    np.testing.assert_allclose(t.min(1), 0.01, rtol=1e-6)
    np.testing.assert_array_equal(t.argmax(1), labels)
    np.testing.assert_array_equal(augment.one_hot_smooth(labels, 10, 0.0), np.eye(10)[labels])


def const_batch(b=6, h=16, w=20, c=3, k=10):
    """Example i is the constant image (i + 1) / 10 with label i: pixels identify sources."""
    vals = (np.arange(b, dtype=np.float32) + 1) / 10
    images = np.broadcast_to(vals[:, None, None, None], (b, h, w, c)).astype(np.float32)
    return images, augment.one_hot_smooth(np.arange(b), k, 0.0), vals


def test_mixup_cutmix_identity_when_disabled():
    images, targets, _ = const_batch()
    out_i, out_t = augment.mixup_cutmix(images, targets, np.random.default_rng(0))
    np.testing.assert_array_equal(out_i, images)
    np.testing.assert_array_equal(out_t, targets)


@pytest.mark.parametrize("seed", range(5))
def test_mixup_targets_convex_and_match_pixels(seed):
    images, targets, vals = const_batch()
    before = images.copy()
    out_i, out_t = augment.mixup_cutmix(
        images, targets, np.random.default_rng(seed), mixup_alpha=0.8
    )
    np.testing.assert_array_equal(images, before)
    assert out_i.shape == images.shape and out_i.dtype == np.float32
    assert out_t.shape == targets.shape and out_t.dtype == np.float32
    assert (out_t >= 0).all()
    np.testing.assert_allclose(out_t.sum(1), 1.0, rtol=1e-6)
    b = len(vals)
    lam = out_t[0, 0]  # weight of example 0's own label
    np.testing.assert_allclose(out_t[0, b - 1], 1 - lam, rtol=1e-5, atol=1e-6)
    for i in range(b):
        j = b - 1 - i
        if i != j:
            np.testing.assert_allclose(out_t[i, i], lam, rtol=1e-5)
        # pixel value = lam * own + (1 - lam) * partner everywhere
        np.testing.assert_allclose(out_i[i], lam * vals[i] + (1 - lam) * vals[j], atol=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_target_weights_equal_pasted_area(seed):
    images, targets, vals = const_batch(b=6, h=16, w=20)
    out_i, out_t = augment.mixup_cutmix(
        images, targets, np.random.default_rng(seed), cutmix_alpha=1.0
    )
    np.testing.assert_allclose(out_t.sum(1), 1.0, rtol=1e-6)
    b = len(vals)
    for i in range(b):
        j = b - 1 - i
        own = np.isclose(out_i[i], vals[i]).all(-1)  # [H, W]
        pasted = np.isclose(out_i[i], vals[j]).all(-1)
        assert (own | pasted).all()
        assert out_t[i, i] == pytest.approx(own.mean(), abs=1e-6)
        assert out_t[i, j] == pytest.approx(pasted.mean(), abs=1e-6)
        # the pasted region is one axis-aligned box, the same for every example
        ys, xs = np.nonzero(pasted)
        if len(ys):
            assert pasted[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()


def test_mixup_cutmix_switch_uses_both_and_is_deterministic():
    images, targets, vals = const_batch()
    kinds = set()
    for seed in range(20):
        out_i, out_t = augment.mixup_cutmix(
            images, targets, np.random.default_rng(seed), mixup_alpha=0.8, cutmix_alpha=1.0
        )
        again = augment.mixup_cutmix(
            images, targets, np.random.default_rng(seed), mixup_alpha=0.8, cutmix_alpha=1.0
        )
        np.testing.assert_array_equal(again[0], out_i)
        np.testing.assert_array_equal(again[1], out_t)
        # a cutmix output holds only the two source values; mixup makes a new value
        uniq = np.unique(out_i[0])
        kinds.add("cutmix" if set(uniq.tolist()) <= {vals[0], vals[-1]} else "mixup")
    assert kinds == {"cutmix", "mixup"}
