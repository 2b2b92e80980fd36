"""Training and evaluation image transforms as plain numpy functions.

The grain input pipeline calls the per-example functions inside a random map, handing each call
its own ``np.random.Generator``; nothing here touches global RNG state, so a pipeline seeded the
same way produces the same batches. Per-example images are HWC ``uint8`` with C = 1 (e.g.
Fashion-MNIST) or C = 3, and every function preserves the channel count. The batch-level
``mixup_cutmix`` works on float32 images after the pipeline has converted and normalised them.

The transforms follow the timm / torchvision recipes the DiDiCM baselines are trained with
(RandomResizedCrop, horizontal flip, ColorJitter, RandAugment ``rand-m9-mstd0.5``, label
smoothing, Mixup/CutMix in batch mode, and the ``crop_pct`` eval resize), reimplemented on top of
PIL so that no TensorFlow or torchvision is needed. Geometry and colour ops go through PIL so
interpolation and antialiasing match what timm produces from the same PIL image.
"""

import math
import os

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from didiff_jax.checks import InputError

# ------------------------------------------------------------------------------------ reading


def read_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """An image file as uint8 [H, W, channels] (1: PIL's grey "L", 3: "RGB"); an unreadable file
    raises :class:`~didiff_jax.checks.InputError` (a ``ValueError``) naming it."""
    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("L" if channels == 1 else "RGB"), np.uint8)
    except (OSError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: not a readable image ({e})") from None
    return image.reshape(image.shape[:2] + (channels,))


# ------------------------------------------------------------------------------ PIL round trip


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"expected an HWC image with C in (1, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")


def _to_pil(image: np.ndarray) -> Image.Image:
    """[H, W, C] uint8 -> PIL image of mode "L" (C = 1) or "RGB" (C = 3)."""
    _check_image(image)
    if image.shape[-1] == 1:
        return Image.fromarray(np.ascontiguousarray(image[..., 0]))
    return Image.fromarray(np.ascontiguousarray(image))


def _from_pil(pil: Image.Image) -> np.ndarray:
    """PIL image of mode "L" or "RGB" -> [H, W, C] uint8 (C = 1 for "L")."""
    arr = np.asarray(pil, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]  # [H, W, 1]
    return np.array(arr)  # an owned, writable copy


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """An int means a square; a pair is (height, width)."""
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


# ------------------------------------------------------------------------------ deterministic


def resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize to ``size`` (an int is a square, a pair is (height, width)).

    Uses PIL's bilinear filter, which widens its support when downsampling (antialiasing), the
    behaviour of torchvision's ``Resize`` on PIL images that the timm recipes assume.
    Returns [h, w, C] uint8.
    """
    h, w = _pair(size)
    pil = _to_pil(image)
    if pil.size == (w, h):
        return np.array(image)
    return _from_pil(pil.resize((w, h), Image.Resampling.BILINEAR))


def center_crop(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Crop the central (height, width) window (torchvision's rounding of the offsets).

    Raises ValueError when the crop is larger than the image (no implicit padding).
    """
    h, w = _pair(size)
    H, W = image.shape[:2]
    if h > H or w > W:
        raise ValueError(f"crop {(h, w)} larger than image {(H, W)}")
    top = int(round((H - h) / 2.0))
    left = int(round((W - w) / 2.0))
    return np.array(image[top : top + h, left : left + w])  # [h, w, C]


def resize_short_side(image: np.ndarray, short: int) -> np.ndarray:
    """Resize so the shorter side is ``short``, keeping the aspect ratio (torchvision rule)."""
    H, W = image.shape[:2]
    if H <= W:
        new_h, new_w = short, int(short * W / H)
    else:
        new_h, new_w = int(short * H / W), short
    return resize(image, (new_h, new_w))


def resize_for_eval(image: np.ndarray, res: int, crop_pct: float = 0.875) -> np.ndarray:
    """The timm eval transform: short side to ``round(res / crop_pct)``, then centre crop ``res``.

    Returns [res, res, C] uint8.
    """
    scale_size = int(round(res / crop_pct))
    return center_crop(resize_short_side(image, scale_size), res)


# ------------------------------------------------------------------------------ random, per example


def _rrc_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (top, left, h, w) of the crop window."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the largest central crop whose aspect ratio is inside `ratio`.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    image: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
    """Inception-style crop: a random area fraction ``scale`` and log-uniform aspect ``ratio``.

    The torchvision algorithm: up to 10 attempts to draw a window that fits, else the central
    crop with the closest admissible aspect ratio. The window is resized bilinearly to
    [size, size, C] uint8.
    """
    H, W = image.shape[:2]
    top, left, h, w = _rrc_params(H, W, rng, scale, ratio)
    return resize(image[top : top + h, left : left + w], size)


def random_flip(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Horizontal flip with probability ``p``. Returns a new [H, W, C] array."""
    if rng.random() < p:
        return np.array(image[:, ::-1])
    return np.array(image)


def random_crop_with_padding(
    image: np.ndarray, rng: np.random.Generator, padding: int = 4
) -> np.ndarray:
    """The CIFAR / Fashion-MNIST crop: zero-pad by ``padding`` on each side, crop back to H x W.

    Equivalent to a random translation of up to ``padding`` pixels with black fill.
    """
    H, W = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))  # [H+2p, W+2p, C]
    top = int(rng.integers(0, 2 * padding + 1))
    left = int(rng.integers(0, 2 * padding + 1))
    return np.array(padded[top : top + H, left : left + W])


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
) -> np.ndarray:
    """torchvision ColorJitter as timm builds it from ``color_jitter=0.4`` (no hue).

    Each strength ``s`` gives a factor uniform in [max(0, 1 - s), 1 + s]; the three adjustments
    (PIL ImageEnhance Brightness / Contrast / Color, i.e. blends with black, the mean grey level
    and the greyscale image) run in a random order. Saturation is a no-op for C = 1, but its
    factor is still drawn so the random stream does not depend on the channel count.
    """
    factors = {
        "brightness": rng.uniform(max(0.0, 1 - brightness), 1 + brightness),
        "contrast": rng.uniform(max(0.0, 1 - contrast), 1 + contrast),
        "saturation": rng.uniform(max(0.0, 1 - saturation), 1 + saturation),
    }
    order = rng.permutation(3)
    names = ("brightness", "contrast", "saturation")
    pil = _to_pil(image)
    for idx in order:
        name = names[idx]
        f = float(factors[name])
        if name == "brightness" and brightness > 0:
            pil = ImageEnhance.Brightness(pil).enhance(f)
        elif name == "contrast" and contrast > 0:
            pil = ImageEnhance.Contrast(pil).enhance(f)
        elif name == "saturation" and saturation > 0 and pil.mode == "RGB":
            pil = ImageEnhance.Color(pil).enhance(f)
    return _from_pil(pil)


# ------------------------------------------------------------------------------ RandAugment

RAND_AUGMENT_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
"""timm's ``_RAND_TRANSFORMS``: the ops ``rand-m{M}`` samples from (uniformly, with replacement)."""

MAGNITUDE_MAX = 10.0
"""Magnitudes live in [0, MAGNITUDE_MAX]; each op maps magnitude / MAGNITUDE_MAX to its range."""

# ImageNet mean in uint8, timm's fill colour for the geometric ops (``img_mean`` hparam); its
# channel average for greyscale images.
_FILL_RGB = (124, 116, 104)
_FILL_GRAY = 115


def apply_rand_augment_op(
    image: np.ndarray,
    name: str,
    magnitude: float,
    rng: np.random.Generator,
    fill: int | tuple[int, ...] | None = None,
) -> np.ndarray:
    """Apply one RandAugment op at ``magnitude`` in [0, 10] (unconditionally), timm's ranges:

    * Rotate: +-30 deg * m/10; ShearX/Y: +-0.3 * m/10; TranslateX/YRel: +-0.45 * m/10 of the
      image width / height (random sign, bilinear, filled with ``fill``, default ImageNet mean).
    * Posterize: keep the top ``int(4 * m/10)`` bits (timm's plain ``Posterize``, 0..4 bits,
      so a larger m keeps more bits; this is the TF EfficientNet convention timm copies).
    * Solarize: invert pixels >= ``256 - int(256 * m/10)``; SolarizeAdd: add ``int(110 * m/10)``
      to pixels < 128 (clipped at 255).
    * Color / Contrast / Brightness / Sharpness: ImageEnhance factor ``0.1 + 1.8 * m/10``.
    * AutoContrast, Equalize, Invert: no magnitude.

    ``rng`` draws only the sign of the signed ops. Returns [H, W, C] uint8.
    """
    _check_image(image)
    c = image.shape[-1]
    if fill is None:
        fill = _FILL_RGB if c == 3 else _FILL_GRAY
    level = float(np.clip(magnitude, 0.0, MAGNITUDE_MAX)) / MAGNITUDE_MAX
    sign = -1.0 if rng.random() > 0.5 else 1.0  # timm's _randomly_negate
    bilinear = Image.Resampling.BILINEAR

    if name == "AutoContrast":
        return _from_pil(ImageOps.autocontrast(_to_pil(image)))
    if name == "Equalize":
        return _from_pil(ImageOps.equalize(_to_pil(image)))
    if name == "Invert":
        return 255 - image
    if name == "Posterize":
        bits = int(level * 4)
        mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
        return image & mask
    if name == "Solarize":
        thresh = 256 - int(level * 256)
        return np.where(image >= thresh, 255 - image, image).astype(np.uint8)
    if name == "SolarizeAdd":
        add = int(level * 110)
        added = np.minimum(image.astype(np.int32) + add, 255).astype(np.uint8)
        return np.where(image < 128, added, image)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        factor = 0.1 + 1.8 * level
        pil = _to_pil(image)
        if name == "Color":
            enhancer = ImageEnhance.Color(pil)
        elif name == "Contrast":
            enhancer = ImageEnhance.Contrast(pil)
        elif name == "Brightness":
            enhancer = ImageEnhance.Brightness(pil)
        else:
            enhancer = ImageEnhance.Sharpness(pil)
        return _from_pil(enhancer.enhance(factor))

    pil = _to_pil(image)
    pil_fill = fill if c == 3 else (fill if isinstance(fill, int) else int(fill[0]))
    if name == "Rotate":
        out = pil.rotate(sign * 30.0 * level, resample=bilinear, fillcolor=pil_fill)
        return _from_pil(out)
    if name in ("ShearX", "ShearY", "TranslateXRel", "TranslateYRel"):
        if name == "ShearX":
            coeffs = (1, sign * 0.3 * level, 0, 0, 1, 0)
        elif name == "ShearY":
            coeffs = (1, 0, 0, sign * 0.3 * level, 1, 0)
        elif name == "TranslateXRel":
            coeffs = (1, 0, sign * 0.45 * level * pil.size[0], 0, 1, 0)
        else:
            coeffs = (1, 0, 0, 0, 1, sign * 0.45 * level * pil.size[1])
        out = pil.transform(
            pil.size, Image.Transform.AFFINE, coeffs, resample=bilinear, fillcolor=pil_fill
        )
        return _from_pil(out)
    raise ValueError(f"unknown RandAugment op {name!r}; valid: {RAND_AUGMENT_OPS}")


def rand_augment(
    image: np.ndarray,
    rng: np.random.Generator,
    num_ops: int = 2,
    magnitude: float = 9,
    magnitude_std: float = 0.5,
    fill: int | tuple[int, ...] | None = None,
) -> np.ndarray:
    """timm's ``rand-m{magnitude}-n{num_ops}-mstd{magnitude_std}`` RandAugment policy.

    ``num_ops`` ops are drawn uniformly with replacement from ``RAND_AUGMENT_OPS``; each is then
    applied with probability 0.5, at a magnitude drawn from N(magnitude, magnitude_std) (uniform
    on [0, magnitude] when the std is inf, exactly ``magnitude`` when it is 0) and clipped to
    [0, 10]. See ``apply_rand_augment_op`` for the per-op ranges. Returns [H, W, C] uint8.
    """
    _check_image(image)
    out = np.array(image)
    choices = rng.integers(0, len(RAND_AUGMENT_OPS), size=num_ops)
    for idx in choices:
        if rng.random() > 0.5:  # each op fires with probability 0.5
            continue
        if math.isinf(magnitude_std):
            m = rng.uniform(0.0, magnitude)
        elif magnitude_std > 0:
            m = rng.normal(magnitude, magnitude_std)
        else:
            m = magnitude
        m = float(np.clip(m, 0.0, MAGNITUDE_MAX))
        out = apply_rand_augment_op(out, RAND_AUGMENT_OPS[idx], m, rng, fill=fill)
    return out


# ------------------------------------------------------------------------------ targets, per batch


def one_hot_smooth(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """Label smoothing: ``(1 - s) * onehot + s / K``, float32 [B, K]; rows sum to 1."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be [B], got shape {labels.shape}")
    onehot = np.zeros((labels.shape[0], num_classes), dtype=np.float32)  # [B, K]
    onehot[np.arange(labels.shape[0]), labels] = 1.0
    return ((1.0 - smoothing) * onehot + smoothing / num_classes).astype(np.float32)


def _cutmix_box(
    height: int, width: int, lam: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """timm's rand_bbox: a box of side ratio sqrt(1 - lam), centre uniform, clipped to the image."""
    cut_ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut_ratio), int(width * cut_ratio)
    cy = int(rng.integers(0, height))
    cx = int(rng.integers(0, width))
    y0, y1 = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    x0, x1 = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    return y0, y1, x0, x1


def mixup_cutmix(
    images: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
    *,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    switch_prob: float = 0.5,
    mix_prob: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """timm Mixup in batch mode: one lambda for the batch, example i paired with B - 1 - i.

    lambda ~ Beta(alpha, alpha). With both alphas > 0, CutMix is chosen with probability
    ``switch_prob``, else Mixup; with one alpha > 0 that method is used. Mixing happens at all
    with probability ``mix_prob`` (timm's ``prob``, default 1). Mixup blends whole images;
    CutMix pastes a box of area about (1 - lambda) from the partner and then resets lambda to
    1 - (actual box area) / (H W), so targets match the pixels exactly. Targets are mixed with
    the same lambda: ``lam * t + (1 - lam) * t[::-1]``. Identity when both alphas are 0.

    images: float32 [B, H, W, C]; targets: float32 [B, K] (e.g. from ``one_hot_smooth``).
    Returns new arrays; the inputs are not modified.
    """
    images = np.asarray(images, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.float32)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images.copy(), targets.copy()
    if rng.random() >= mix_prob:
        return images.copy(), targets.copy()

    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = bool(rng.random() < switch_prob)
    else:
        use_cutmix = cutmix_alpha > 0
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))

    flipped = images[::-1]  # [B, H, W, C], the partner of example i is B - 1 - i
    if use_cutmix:
        H, W = images.shape[1:3]
        y0, y1, x0, x1 = _cutmix_box(H, W, lam, rng)
        mixed = images.copy()
        mixed[:, y0:y1, x0:x1] = flipped[:, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(H * W)
    else:
        mixed = (lam * images + (1.0 - lam) * flipped).astype(np.float32)
    mixed_targets = (lam * targets + (1.0 - lam) * targets[::-1]).astype(np.float32)  # [B, K]
    return mixed, mixed_targets
