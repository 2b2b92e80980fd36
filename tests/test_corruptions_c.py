"""Fashion-MNIST-C corruptions: shape/dtype/range, seeding, severity order, padding semantics."""

import sys
import time

import numpy as np
import pytest

from didiff_jax.data import corruptions_c as CC

pytest.importorskip("imagecorruptions", reason="needs didiff_jax[corruptions]")

FAST = ("gaussian_noise", "impulse_noise", "contrast", "pixelate", "jpeg_compression", "fog")
"""A quick subset covering per-pixel noise, a global statistic, block structure and a random field."""


def garment(seed: int, n: int = 4, size: int = 28, c: int = 1) -> np.ndarray:
    """uint8 [n, size, size, c]: a textured bright blob on a black background (Fashion-MNIST-like)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / (size - 1)
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.25, 0.4)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(float)  # [size, size]
        texture = rng.uniform(0.5, 1.0, (size, size, c))
        out.append(np.rint(255 * blob[..., None] * texture))
    return np.asarray(out, dtype=np.uint8)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("name", FAST)
def test_shape_dtype_range_kept(name, c):
    images = garment(0, n=3, c=c)
    out = CC.corrupt_c(images, name, 3, seed=0)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert not np.array_equal(out, images)
    floats = images.astype(np.float32) / 255.0
    out_f = CC.corrupt_c(floats, name, 3, seed=0)
    assert out_f.shape == floats.shape and out_f.dtype == np.float32
    assert out_f.min() >= 0.0 and out_f.max() <= 1.0
    np.testing.assert_array_equal(np.rint(out_f * 255).astype(np.uint8), out)  # same 8-bit result


def test_images_of_32_px_and_more_are_not_padded():
    images = garment(1, n=2, size=40, c=3)
    out = CC.corrupt_c(images, "gaussian_noise", 1, seed=0)
    assert out.shape == images.shape


def test_deterministic_for_the_seed_and_independent_of_batch_split():
    images = garment(2, n=5)
    for name in ("gaussian_noise", "impulse_noise", "fog", "elastic_transform"):
        whole = CC.corrupt_c(images, name, 2, seed=7)
        np.testing.assert_array_equal(whole, CC.corrupt_c(images, name, 2, seed=7))
        split = np.concatenate(
            [
                CC.corrupt_c(images[:2], name, 2, seed=7),
                CC.corrupt_c(images[2:], name, 2, seed=7, index_offset=2),
            ]
        )
        np.testing.assert_array_equal(whole, split)
        assert not np.array_equal(whole, CC.corrupt_c(images, name, 2, seed=8))


def test_global_random_state_is_restored():
    # The package uses numpy's legacy global state; the caller's draws must not be disturbed.
    np.random.seed(123)  # noqa: NPY002
    expected = np.random.random(3)  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    CC.corrupt_c(garment(3, n=2), "shot_noise", 2, seed=0)
    np.testing.assert_array_equal(np.random.random(3), expected)  # noqa: NPY002


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "contrast", "defocus_blur"])
def test_severity_is_monotone_in_mean_abs_difference(name):
    images = garment(4, n=4)
    diffs = [
        np.abs(CC.corrupt_c(images, name, s, seed=0).astype(float) - images).mean()
        for s in CC.SEVERITIES
    ]
    assert np.all(np.diff(diffs) > 0), diffs


def test_padding_keeps_the_original_pixels():
    # brightness on a grey image is pixel-wise (V + c in HSV): with reflect padding and cropping,
    # every output pixel is that function of the same input pixel; resizing would mix neighbours.
    images = garment(5, n=2)
    out = CC.corrupt_c(images, "brightness", 1, seed=0)
    expected = np.clip(images / 255.0 + 0.1, 0, 1) * 255
    assert np.abs(out.astype(float) - expected).max() <= 1.0


def test_grey_noise_keeps_the_nominal_std():
    # Severity 1 gaussian_noise has std 0.08 (x 255); averaging three channels would give ~0.046.
    images = np.full((4, 28, 28, 1), 128, np.uint8)
    out = CC.corrupt_c(images, "gaussian_noise", 1, seed=0).astype(float)
    assert np.std(out - 128) / 255 == pytest.approx(0.08, rel=0.1)


def test_seed_derivation():
    a = CC.corruption_seed(0, "fog", 5)
    assert a == CC.corruption_seed(0, "fog", 5)
    assert len({a, CC.corruption_seed(1, "fog", 5), CC.corruption_seed(0, "snow", 5)}) == 3
    assert 0 <= a < 2**32


def test_bad_arguments():
    images = garment(6, n=1)
    with pytest.raises(ValueError, match="unknown corruption"):
        CC.corrupt_c(images, "speckle_noise", 1)
    with pytest.raises(ValueError, match="severity"):
        CC.corrupt_c(images, "fog", 0)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        CC.corrupt_c(images[0], "fog", 1)
    with pytest.raises(ValueError, match="uint8 or floating"):
        CC.corrupt_c(images.astype(np.int32), "fog", 1)


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "imagecorruptions", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"didiff_jax\[corruptions\]"):
        CC.corrupt_c(garment(7, n=1), "fog", 1)


def test_groups_cover_the_15_corruptions():
    assert len(CC.CORRUPTIONS_C) == 15
    grouped = [n for names in CC.CORRUPTION_GROUPS.values() for n in names]
    assert tuple(grouped) == CC.CORRUPTIONS_C


@pytest.mark.parametrize("c", [1, 3])
def test_every_corruption_but_glass_blur_runs(c):
    # glass_blur is left to the slow test: its first call in a process compiles numba (~8 s).
    images = garment(9, n=1, c=c)
    for name in CC.CORRUPTIONS_C:
        if name != "glass_blur":
            out = CC.corrupt_c(images, name, 3, seed=0)
            assert out.shape == images.shape and out.dtype == np.uint8


@pytest.mark.slow
@pytest.mark.parametrize("c", [1, 3])
def test_all_15_corruptions_run_at_every_severity(c):
    images = garment(8, n=2, c=c)
    for name in CC.CORRUPTIONS_C:
        start = time.perf_counter()
        for s in CC.SEVERITIES:
            out = CC.corrupt_c(images, name, s, seed=0)
            assert out.shape == images.shape and out.dtype == np.uint8
        print(f"{name}: {time.perf_counter() - start:.2f} s for 5 severities")
