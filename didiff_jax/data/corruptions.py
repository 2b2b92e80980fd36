"""Observation corruptions ``y = h(x)`` for the DiDiCM corrupted-input experiments.

The classifier only ever sees ``y = h(x)``: the same corruption family and severity is applied
to training and test images, so the experiments measure how label-space diffusion copes with
a less informative observation, not distribution shift. Images are float32 HWC in [0, 1] with
C = 1 or 3; outputs stay in [0, 1] and keep the shape and channel count.

Three families, five severities each (0 is the identity), with monotone parameters:

* ``gaussian_noise``: additive N(0, sigma^2) per pixel and channel, then clipped to [0, 1].
* ``gaussian_blur``: separable Gaussian blur with sigma proportional to the image size.
* ``downsample``: antialiased bilinear downsampling by an integer factor, then bilinear
  upsampling back to H x W (information is lost, the shape is kept).

``downsample_to`` is the "low resolution" condition: down to res x res, then back up.
"""

import math

import numpy as np
from PIL import Image

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "downsample")
"""The corruption families ``corrupt`` accepts."""

NUM_SEVERITIES = 5
"""Severities are 0 (identity) through NUM_SEVERITIES."""

NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
"""Gaussian noise std for severities 1..5, in [0, 1] pixel units (ImageNet-C's table).

Clipping to [0, 1] afterwards lowers the realised std on pixels near 0 or 1 (on a mid-grey
image severity 5 realises about 0.32 instead of 0.38)."""

BLUR_SIGMA_FRAC = (0.012, 0.02, 0.03, 0.045, 0.065)
"""Gaussian blur std for severities 1..5 as a fraction of the image's shorter side.

Relative to the image size so that a severity removes the same band of (relative) spatial
frequencies at every resolution: 0.34, 0.56, 0.84, 1.26, 1.82 px at 28 px (Fashion-MNIST),
0.38 .. 2.08 px at 32 px (CIFAR-10-C uses 0.4 .. 1.0), 2.7 .. 14.6 px at 224 px (ImageNet-C
uses 1 .. 6, so our upper severities are harsher there)."""

DOWNSAMPLE_FACTOR = (2, 3, 4, 6, 8)
"""Downsampling factors for severities 1..5: H x W goes to round(H / f) x round(W / f) (at
least 1 px) and back, e.g. 28 px -> 14, 9, 7, 5, 4 px; 224 px -> 112, 75, 56, 37, 28 px."""


def _check(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an HWC image with C in (1, 3), got shape {image.shape}")
    return image


def _resize_float(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear, antialiased (PIL) resize of a float32 [H, W, C] image, channel by channel."""
    if image.shape[:2] == (height, width):
        return image.copy()
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
                (width, height), Image.Resampling.BILINEAR
            ),
            dtype=np.float32,
        )
        for c in range(image.shape[-1])
    ]
    return np.stack(channels, axis=-1)  # [height, width, C]


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps on [-ceil(3 sigma), ceil(3 sigma)], float64."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur_matrix(n: int, kernel: np.ndarray) -> np.ndarray:
    """[n, n] matrix M with (M @ v) = v convolved with ``kernel``, edges mirrored ("symmetric").

    Built by filtering the identity, so a blur along an axis becomes one matrix product, which
    is much faster than a tap-by-tap loop for the wide kernels of large images.
    """
    r = len(kernel) // 2
    padded = np.pad(np.eye(n), ((r, r), (0, 0)), mode="symmetric")  # mirrors repeatedly if r > n
    out = np.zeros((n, n), dtype=np.float64)
    for i, w in enumerate(kernel):
        out += w * padded[i : i + n]
    return out


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with std ``sigma`` pixels, float32 [H, W, C] in and out.

    Taps cover +-ceil(3 sigma); borders are mirrored (scipy.ndimage's "reflect" convention).
    """
    image = _check(image)
    if sigma <= 0:
        return image.copy()
    k = _gaussian_kernel(sigma)
    H, W = image.shape[:2]
    C = image.shape[2]
    out = _blur_matrix(H, k) @ image.astype(np.float64).reshape(H, W * C)  # [H, W*C], rows
    out = out.reshape(H, W, C).transpose(1, 0, 2).reshape(W, H * C)  # [W, H*C]
    out = (_blur_matrix(W, k) @ out).reshape(W, H, C).transpose(1, 0, 2)  # [H, W, C], columns
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def downsample_to(image: np.ndarray, res: int | tuple[int, int]) -> np.ndarray:
    """The "low resolution" condition: resize to res x res, then back to the original H x W.

    Both steps are PIL bilinear (antialiased when shrinking). ``res`` may also be a pair
    (height, width). Returns float32 [H, W, C] in [0, 1].
    """
    image = _check(image)
    H, W = image.shape[:2]
    rh, rw = (res, res) if isinstance(res, int | np.integer) else res
    small = _resize_float(image, int(rh), int(rw))  # [rh, rw, C]
    return np.clip(_resize_float(small, H, W), 0.0, 1.0)


def corrupt(image: np.ndarray, kind: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply corruption ``kind`` at ``severity`` (0 = identity, 1..5 see the module tables).

    image: float32 [H, W, C] in [0, 1]. ``rng`` is used only by the stochastic kind
    (gaussian_noise), so the deterministic kinds give the same output for every generator.
    Raises ValueError for an unknown kind or severity. Returns float32 [H, W, C] in [0, 1].
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption kind {kind!r}; valid choices: {CORRUPTIONS}")
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer):
        raise ValueError(f"severity must be an int in 0..{NUM_SEVERITIES}, got {severity!r}")
    if not 0 <= severity <= NUM_SEVERITIES:
        raise ValueError(
            f"unknown severity {severity}; valid choices: {tuple(range(NUM_SEVERITIES + 1))}"
        )
    image = _check(image)
    if severity == 0:
        return image.copy()

    if kind == "gaussian_noise":
        sigma = NOISE_SIGMA[severity - 1]
        noisy = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
        return np.clip(noisy, 0.0, 1.0).astype(np.float32)
    if kind == "gaussian_blur":
        sigma = BLUR_SIGMA_FRAC[severity - 1] * min(image.shape[:2])
        return gaussian_blur(image, sigma)
    # downsample
    factor = DOWNSAMPLE_FACTOR[severity - 1]
    H, W = image.shape[:2]
    small = (max(1, math.floor(H / factor + 0.5)), max(1, math.floor(W / factor + 0.5)))
    return downsample_to(image, small)
