"""Fashion-MNIST-C: the 15 ImageNet-C corruptions at severities 1-5, for small grey or RGB images.

The corruption benchmark of Hendrycks & Dietterich (2019, "Benchmarking Neural Network Robustness
to Common Corruptions and Perturbations"): 15 corruptions in four groups (noise, blur, weather,
digital), five severities each, applied to the *test* set only; a model trained on clean images
is scored by its error per corruption and severity (``didiff_jax.uncertainty.mean_corruption_error``).
Unlike ``didiff_jax.data.corruptions`` (the same corruption at train and test time), this measures
robustness to distribution shift.

The corruptions come from the maintained ``imagecorruptions-imaug`` package (>= 1.1.5; the original
``imagecorruptions`` 1.1.2 fails on some corruptions with current numpy / scikit-image). It is an
optional dependency: ``pip install didiff_jax[corruptions]``, imported only when called.

**28 px -> 32 px by reflect padding.** The package refuses images under 32 x 32 px. A 28 px image is
reflect-padded by 2 px on each side (numpy ``mode="reflect"``), corrupted at 32 x 32, and the
central 28 x 28 is cropped back. Why padding and not resizing 28 -> 32 -> 28:

* Resizing resamples every pixel twice, so even the uncorrupted content is blurred, and the
  resampling back down low-passes the corruption itself: it averages neighbouring noise draws
  (lower effective noise std), smears impulse-noise dots, misaligns pixelation blocks and JPEG's
  8 x 8 blocks with the original grid. The severity tables would no longer mean what they say.
* Padding leaves the original pixels and grid untouched: pixel-wise corruptions (noise,
  brightness, ...) act on the kept pixels exactly as on a 32 px image, and spatial ones (blur,
  zoom, elastic, glass) act with their nominal pixel parameters; the padding is symmetric, so
  zoom blur still zooms about the image centre.
* Reflection (not zeros) continues the image across the border, so blurs and displacements that
  pull in pixels from outside see plausible content, and it adds no new pixel values (``fog``
  rescales by the image maximum, which reflection keeps). What it does change slightly: global
  statistics over the canvas (``contrast`` uses the canvas mean), and the random fields (fog's
  plasma, snow, frost crop) are drawn for the 32 px canvas and cropped.

Images of at least 32 px are corrupted as they are. Note that the package's parameters are the
ImageNet-C ones, in absolute pixels tuned for 224 px images (e.g. defocus-blur radius 3-10 px,
motion-blur radius 10-20 px); on 28 px images the blurs (and ``zoom_blur``, ``glass_blur``) are
therefore far harsher relative to the object than on ImageNet. Conversely ``elastic_transform``
scales its smoothing with the image (sigma = 1% of the side, 0.32 px at 32 px), so at this size its
displacement field is almost unsmoothed: it scatters pixels locally rather than bending the
garment. CIFAR-10-C re-tuned the parameters for 32 px; this module keeps the package's tables so
that results are comparable with other users of it.

**Grey images.** The package corrupts RGB; a grey [H, W, 1] image is replicated to 3 channels and
converted back afterwards. For the three per-pixel noises (``gaussian_noise``, ``shot_noise``,
``impulse_noise``) the channels receive independent draws, so the first channel is kept: it has
exactly the noise distribution of the severity table (averaging channels would cut the noise std
by ~sqrt(3)). For every other corruption the output is the ITU-R 601 luminance
``0.299 R + 0.587 G + 0.114 B``: identical channels stay what they are, and ``frost``'s coloured ice
texture becomes its grey value.

**Seeding.** The package draws from numpy's *global* random state (and takes an explicit seed in
``impulse_noise`` and ``glass_blur``). Each image gets its own seed, derived from ``(seed, name,
index)`` by ``corruption_seed``, where ``index`` is the image's position in the whole data set
(``index_offset`` + position in the batch): the output does not depend on how the data set is split
into batches or in which order batches run. The severity is not part of the seed, so one image's
five severities share their random draws (common random numbers: the severity effect is not
confounded with draw-to-draw variation). The global state is saved and restored around each call;
the global state makes concurrent calls from threads unsafe (use processes).

**Speed.** One image at a time on one CPU core (the package is per-image Python); seconds per
1,000 grey 28 px images, for one corruption at one severity (measured at severities 1, 3, 5 on a
shared, loaded 2-core machine, so upper bounds):

=================  ====  =================  ====  =================  ====
gaussian_noise      0.7  glass_blur          2    fog                 2.3
shot_noise          0.8  motion_blur         3-5  brightness          2.2
impulse_noise       1.2  zoom_blur           7    contrast            1.0
defocus_blur        1.2  snow                3-4  elastic_transform   2.5
pixelate            0.7  frost              15    jpeg_compression    1.2
=================  ====  =================  ====  =================  ====

About 46 s per 1,000 images for all 15 corruptions at one severity, so the full Fashion-MNIST-C
test set (10,000 images x 15 x 5) takes about 40 min on one core: build it once and cache it, or
split it over processes (``index_offset`` keeps the result identical). ``frost`` dominates (it
reads and resizes a full-size frost photograph for every image). ``glass_blur`` also pays a
one-off numba compilation of about 8 s in each new process.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

CORRUPTIONS_C = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
"""The 15 benchmark corruptions of Hendrycks & Dietterich (2019), in their order."""

CORRUPTION_GROUPS = {
    "noise": CORRUPTIONS_C[0:3],
    "blur": CORRUPTIONS_C[3:7],
    "weather": CORRUPTIONS_C[7:11],
    "digital": CORRUPTIONS_C[11:15],
}
"""The four groups the paper reports averages for."""

SEVERITIES = (1, 2, 3, 4, 5)
"""Severity levels; there is no severity 0 (evaluate clean images separately)."""

MIN_SIZE = 32
"""Smallest height / width the package accepts; smaller images are reflect-padded to this."""

_SEED_ARGUMENT = frozenset({"impulse_noise", "glass_blur"})  # take ``seed=``, not the global state
_GREY_FIRST_CHANNEL = frozenset({"gaussian_noise", "shot_noise", "impulse_noise"})
_LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's "L" mode


def _imagecorruptions() -> Any:
    """Import the optional package (function-local: the module imports without it)."""
    try:
        import imagecorruptions
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Fashion-MNIST-C corruptions need the optional package imagecorruptions-imaug>=1.1.5: "
            "pip install didiff_jax[corruptions]"
        ) from err
    return imagecorruptions


def corruption_seed(seed: int, name: str, index: int) -> int:
    """The 32-bit seed of image ``index`` (position in the whole data set) for corruption ``name``.

    Derived with ``np.random.SeedSequence`` from ``(seed, crc32(name), index)``, so streams of
    different images, corruptions and base seeds are independent, and the result is stable across
    processes and Python versions (no ``hash()``).
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got {seed}, {index}")
    entropy = [int(seed), zlib.crc32(name.encode()), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def _pad_widths(size: int) -> tuple[int, int]:
    total = max(0, MIN_SIZE - size)
    return total // 2, total - total // 2


def _corrupt_one(module: Any, image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt one uint8 [H, W, C] image (C in 1, 3) -> uint8 [H, W, C]."""
    h, w, c = image.shape
    (top, bottom), (left, right) = _pad_widths(h), _pad_widths(w)
    canvas = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="reflect")
    if c == 1:
        canvas = np.repeat(canvas, 3, axis=-1)  # [H', W', 3]
    kwargs = {"seed": seed} if name in _SEED_ARGUMENT else {}
    # The package draws from numpy's legacy global state, so that is what must be seeded (NPY002).
    state = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(seed)  # noqa: NPY002
        out = module.corrupt(canvas, severity=severity, corruption_name=name, **kwargs)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    out = np.asarray(out, dtype=np.uint8)[top : top + h, left : left + w]  # [H, W, 3]
    if c == 3:
        return out
    if name in _GREY_FIRST_CHANNEL:
        return out[..., :1]
    grey = np.rint(out.astype(np.float64) @ _LUMINANCE)  # [H, W]
    return np.clip(grey, 0, 255).astype(np.uint8)[..., None]


def corrupt_c(
    images: np.ndarray, name: str, severity: int, seed: int = 0, *, index_offset: int = 0
) -> np.ndarray:
    """Apply one ImageNet-C corruption at one severity to a batch of images.

    Args:
      images: [N, H, W, C] with C in (1, 3), either uint8 in [0, 255] or floating in [0, 1]
        (quantised to 8 bits for the package, which works on uint8, and returned as floats).
      name: one of ``CORRUPTIONS_C``.
      severity: 1..5.
      seed: base seed; with ``index_offset`` it fixes every image's random draws.
      index_offset: data-set index of ``images[0]`` (image i uses index ``index_offset + i``), so
        corrupting a data set in batches gives the same result as corrupting it at once.

    Returns:
      The corrupted images, same shape and dtype as ``images`` (floats stay in [0, 1]).
    """
    if name not in CORRUPTIONS_C:
        raise ValueError(f"unknown corruption {name!r}; expected one of {CORRUPTIONS_C}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected [N, H, W, C] images with C in (1, 3), got shape {x.shape}")
    if x.dtype == np.uint8:
        as_uint8 = x
    elif np.issubdtype(x.dtype, np.floating):
        as_uint8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"images must be uint8 or floating, got {x.dtype}")
    module = _imagecorruptions()
    out = np.empty_like(as_uint8)  # [N, H, W, C]
    for i in range(x.shape[0]):
        image_seed = corruption_seed(seed, name, index_offset + i)
        out[i] = _corrupt_one(module, as_uint8[i], name, severity, image_seed)
    if x.dtype == np.uint8:
        return out
    return (out.astype(np.float64) / 255.0).astype(x.dtype)


# ---------------------------------------------------------------------- synthetic OOD sets

OOD_SETS = ("noise", "inverted", "flipped")
"""The synthetic out-of-distribution sets :func:`ood_images` makes from in-distribution images."""


def ood_images(images: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """uint8 [N, H, W, C] out-of-distribution images made from uint8 ``images`` (same shape):
    ``noise``: uniform noise (seeded), ``inverted``: 255 - x, ``flipped``: upside down. Each keeps
    the image size and range, so only the content says "not a garment"."""
    if kind == "noise":
        return np.random.default_rng(seed).integers(0, 256, images.shape, dtype=np.uint8)
    if kind == "inverted":
        return 255 - images
    if kind == "flipped":
        return np.ascontiguousarray(images[:, ::-1])
    raise ValueError(f"unknown OOD set {kind!r}; expected one of {OOD_SETS}")
