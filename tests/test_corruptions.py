"""Observation corruptions y = h(x): identity at severity 0, monotone severities, range and shape."""

import numpy as np
import pytest
from scipy import stats

from didiff_jax.data import corruptions as C

CHANNELS = [1, 3]


def texture(seed: int, h: int = 28, w: int = 28, c: int = 3) -> np.ndarray:
    """A float32 [h, w, c] image in [0, 1] with energy at every spatial frequency."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    smooth = 0.5 + 0.3 * np.sin(6 * yy + 4 * xx)[..., None]
    return np.clip(smooth + rng.uniform(-0.2, 0.2, (h, w, c)), 0, 1).astype(np.float32)


def high_freq_energy(img: np.ndarray) -> float:
    """Spectral energy above half the Nyquist frequency (either axis), summed over channels.

    A Hann window first, so the wrap-around edge of the periodic FFT adds no spurious energy.
    """
    h, w = img.shape[:2]
    window = np.outer(np.hanning(h), np.hanning(w))[..., None]  # [H, W, 1]
    spec = np.abs(np.fft.fft2((img - img.mean((0, 1))) * window, axes=(0, 1))) ** 2  # [H, W, C]
    fy = np.abs(np.fft.fftfreq(h))[:, None]
    fx = np.abs(np.fft.fftfreq(w))[None, :]
    mask = np.maximum(fy, fx) > 0.25
    return float(spec[mask].sum())


@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("kind", C.CORRUPTIONS)
def test_shape_dtype_range_and_identity(kind, c):
    img = texture(0, 28, 28, c)
    before = img.copy()
    out0 = C.corrupt(img, kind, 0, np.random.default_rng(0))
    np.testing.assert_array_equal(out0, img)
    for sev in range(1, C.NUM_SEVERITIES + 1):
        out = C.corrupt(img, kind, sev, np.random.default_rng(sev))
        assert out.shape == img.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert not np.allclose(out, img, atol=1e-3)
    np.testing.assert_array_equal(img, before)  # never modified in place
    # Range also holds at the extremes (a saturated image).
    sat = (texture(1, 28, 28, c) > 0.5).astype(np.float32)
    out = C.corrupt(sat, kind, 5, np.random.default_rng(0))
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("kind", C.CORRUPTIONS)
def test_determinism(kind):
    img = texture(2)
    a = C.corrupt(img, kind, 3, np.random.default_rng(7))
    np.testing.assert_array_equal(a, C.corrupt(img, kind, 3, np.random.default_rng(7)))
    b = C.corrupt(img, kind, 3, np.random.default_rng(8))
    if kind == "gaussian_noise":
        assert not np.array_equal(a, b)
    else:  # deterministic kinds ignore the generator
        np.testing.assert_array_equal(a, b)


def test_invalid_kind_and_severity():
    img = texture(0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="gaussian_blur"):
        C.corrupt(img, "jpeg", 1, rng)
    with pytest.raises(ValueError, match="valid"):
        C.corrupt(img, "gaussian_noise", 6, rng)
    with pytest.raises(ValueError):
        C.corrupt(img, "gaussian_noise", -1, rng)


def test_tables_are_monotone():
    for table in (C.NOISE_SIGMA, C.BLUR_SIGMA_FRAC, C.DOWNSAMPLE_FACTOR):
        assert len(table) == C.NUM_SEVERITIES
        assert all(a < b for a, b in zip(table, table[1:], strict=False))


def clipped_noise_std(sigma: float, a: float = 0.5) -> float:
    """Exact std of clip(sigma Z, -a, a) for Z ~ N(0, 1): noise on a mid-grey pixel."""
    t = a / sigma
    inside = sigma**2 * ((2 * stats.norm.cdf(t) - 1) - 2 * t * stats.norm.pdf(t))
    tails = 2 * a**2 * stats.norm.sf(t)
    return float(np.sqrt(inside + tails))


@pytest.mark.parametrize("sev", range(1, 6))
def test_noise_std_matches_table(sev):
    grey = np.full((128, 128, 3), 0.5, np.float32)
    diff = C.corrupt(grey, "gaussian_noise", sev, np.random.default_rng(sev)) - grey
    sigma = C.NOISE_SIGMA[sev - 1]
    assert abs(diff.mean()) < 0.005
    np.testing.assert_allclose(diff.std(), clipped_noise_std(sigma), rtol=0.02)
    if sev <= 3:  # clipping is negligible here: the table value itself
        np.testing.assert_allclose(diff.std(), sigma, rtol=0.03)


@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("size", [28, 64])
def test_blur_reduces_high_frequencies_monotonically(size, c):
    img = texture(3, size, size, c)
    energies = [
        high_freq_energy(C.corrupt(img, "gaussian_blur", s, np.random.default_rng(0)))
        for s in range(6)
    ]
    assert all(a > b for a, b in zip(energies, energies[1:], strict=False)), energies
    assert energies[-1] < 0.05 * energies[0]


def test_blur_preserves_constant_and_mean():
    const = np.full((28, 28, 1), 0.3, np.float32)
    np.testing.assert_allclose(C.gaussian_blur(const, 2.0), const, atol=1e-6)
    img = texture(4)
    assert abs(C.gaussian_blur(img, 1.0).mean() - img.mean()) < 0.01


@pytest.mark.parametrize("c", CHANNELS)
@pytest.mark.parametrize("size", [28, 32])
def test_downsample_error_monotone(size, c):
    img = texture(5, size, size, c)
    errors = [
        float(np.mean((C.corrupt(img, "downsample", s, np.random.default_rng(0)) - img) ** 2))
        for s in range(6)
    ]
    assert errors[0] == 0.0
    assert all(a < b for a, b in zip(errors, errors[1:], strict=False)), errors


@pytest.mark.parametrize("c", CHANNELS)
def test_downsample_to(c):
    img = texture(6, 28, 28, c)
    out = C.downsample_to(img, 7)
    assert out.shape == img.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_allclose(C.downsample_to(img, 28), img)  # same size: no-op
    # It equals the downsample corruption when the factor gives the same size (28 / 4 = 7).
    np.testing.assert_array_equal(out, C.corrupt(img, "downsample", 3, np.random.default_rng(0)))
    # Smaller targets lose more.
    errs = [float(np.mean((C.downsample_to(img, r) - img) ** 2)) for r in (14, 7, 4)]
    assert errs[0] < errs[1] < errs[2]
