"""2-D convolution that picks, per shape and backend, the form XLA runs fastest.

XLA:CPU's convolution is far from the machine's matmul speed on some shapes: a 3x3 convolution whose
output map is at most 2x2 (the last DiDiRN stage at 28 px) runs ~70x slower forward than the same
arithmetic as one matmul, and a strided 3x3 convolution from 4x4 onto 2x2 ~14x slower forward and
backward (``benchmarks/conv_forms.py`` measures every shape the networks use; docs/results.md). On GPU and TPU, XLA's
convolution (cuDNN, the TPU's MXU lowering) is the fast form everywhere, so nothing changes there.

Forms (all NHWC images, HWIO kernels, explicit padding; gradients come from JAX's autodiff of the
form, so the weight gradient of ``im2col`` is itself one matmul):

* ``xla``: ``lax.conv_general_dilated``.
* ``matmul``: a 1x1 convolution as a (strided) slice and one matmul over channels.
* ``patchify``: a non-overlapping convolution (kernel == stride, no padding: the ViT patch
  embedding) as a reshape into patches and one matmul.
* ``im2col``: the ``kh * kw`` shifted (strided) slices of the padded input concatenated on the
  channel axis, then one matmul with the kernel reshaped to ``[kh * kw * Cin, Cout]``.

``select_form`` holds the rule; ``conv_general_dilated`` has ``lax.conv_general_dilated``'s
signature, so Flax's ``nnx.Conv(..., conv_general_dilated=...)`` takes it and the parameters,
their names and checkpoints stay those of ``nnx.Conv``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

FORMS = ("auto", "xla", "matmul", "patchify", "im2col")

# NHWC images, HWIO kernels, as lax.ConvDimensionNumbers (what Flax passes for 2-D inputs).
_NHWC = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)

# Output maps of at most this many pixels go through ``im2col`` on CPU (measured, see module doc).
CPU_IM2COL_MAX_OUT_PIXELS = 4


def _out_size(size: int, k: int, stride: int, lo: int, hi: int) -> int:
    return (size + lo + hi - k) // stride + 1


def select_form(
    in_hw: Sequence[int],
    kernel_hw: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    backend: str,
) -> str:
    """The form ``auto`` runs for one 2-D convolution on ``backend`` ('cpu', 'gpu', 'tpu', ...).

    Off the CPU: always ``xla``. On the CPU: 1x1 -> ``matmul``; kernel == stride without padding ->
    ``patchify``; an output map of at most ``CPU_IM2COL_MAX_OUT_PIXELS`` -> ``im2col``; else
    ``xla`` (which measures as fast or faster than the matmul forms on larger maps).
    """
    if backend != "cpu":
        return "xla"
    (kh, kw), (sh, sw) = kernel_hw, strides
    no_pad = all(lo == 0 and hi == 0 for lo, hi in padding)
    if kh == kw == 1 and no_pad:
        return "matmul"
    if (kh, kw) == (sh, sw) and no_pad:
        return "patchify"
    out_h = _out_size(in_hw[0], kh, sh, *padding[0])
    out_w = _out_size(in_hw[1], kw, sw, *padding[1])
    if out_h * out_w <= CPU_IM2COL_MAX_OUT_PIXELS:
        return "im2col"
    return "xla"


def _window_slices(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], out_hw):
    """The ``wh * ww`` strided slices of padded ``x`` [B, H, W, C], row-major window order."""
    (wh, ww), (sh, sw), (ho, wo) = window, strides, out_hw
    return [
        x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
        for i in range(wh)
        for j in range(ww)
    ]


def _matmul_1x1(x: jax.Array, w: jax.Array, strides, precision, pet) -> jax.Array:
    sh, sw = strides
    x = x[:, ::sh, ::sw, :]  # [B, Ho, Wo, Cin]
    return jnp.dot(x, w[0, 0], precision=precision, preferred_element_type=pet)


def _patchify(x: jax.Array, w: jax.Array, precision, pet) -> jax.Array:
    kh, kw, cin, cout = w.shape
    B, H, W, _ = x.shape
    ho, wo = H // kh, W // kw
    x = x[:, : ho * kh, : wo * kw, :].reshape(B, ho, kh, wo, kw, cin)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(B, ho, wo, kh * kw * cin)  # [B, Ho, Wo, kh*kw*Cin]
    return jnp.dot(
        x, w.reshape(kh * kw * cin, cout), precision=precision, preferred_element_type=pet
    )


def _im2col(x: jax.Array, w: jax.Array, strides, padding, precision, pet) -> jax.Array:
    kh, kw, cin, cout = w.shape
    (sh, sw), (ph, pw) = strides, padding
    x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    cols = _window_slices(x, (kh, kw), (sh, sw), (ho, wo))  # kh*kw x [B, Ho, Wo, Cin]
    patches = jnp.concatenate(cols, axis=-1)  # [B, Ho, Wo, kh*kw*Cin], (i, j, c) order as HWIO
    return jnp.dot(
        patches, w.reshape(kh * kw * cin, cout), precision=precision, preferred_element_type=pet
    )


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    form: str = "auto",
    **kwargs,
) -> jax.Array:
    """``lax.conv_general_dilated`` with the same signature and result, computed in ``form``.

    Only plain 2-D NHWC/HWIO convolutions (explicit padding, no dilation, one group) take the
    other forms; anything else, and ``form='xla'``, is ``lax.conv_general_dilated`` itself.
    """
    if form not in FORMS:
        raise ValueError(f"conv form must be one of {FORMS}, got {form!r}")

    def xla(lhs: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type, **kwargs,
        )  # fmt: skip

    if padding == "VALID":
        padding = ((0, 0), (0, 0))
    plain = (
        form != "xla"
        and lhs.ndim == 4
        and not isinstance(padding, str)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
        and not kwargs.get("out_sharding")
    )
    if not plain:
        return xla(lhs)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    strides = tuple(int(s) for s in window_strides)
    if form == "auto":
        form = select_form(lhs.shape[1:3], rhs.shape[:2], strides, padding, jax.default_backend())
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    pet = preferred_element_type
    if form == "matmul" and rhs.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
        return _matmul_1x1(lhs, rhs, strides, precision, pet)
    if form == "patchify" and rhs.shape[:2] == strides and padding == ((0, 0), (0, 0)):
        return _patchify(lhs, rhs, precision, pet)
    if form == "im2col":
        return _im2col(lhs, rhs, strides, padding, precision, pet)
    if form == "xla":
        if jax.default_backend() == "cpu":
            # Materialise the input: otherwise XLA:CPU fuses its elementwise producers (the
            # norms and activations before this convolution) into the transposing copy that
            # feeds the weight gradient, where they run in a transposed loop order (~10% of
            # the width-64 DiDiRN-18 train step at 28 px, measured on a 2-core CPU).
            lhs = lax.optimization_barrier(lhs)
        return xla(lhs)
    raise ValueError(
        f"conv form {form!r} does not apply to kernel {rhs.shape[:2]}, strides {strides}, "
        f"padding {padding}"
    )


@dataclasses.dataclass(frozen=True)
class ConvFn:
    """The ``conv_general_dilated`` argument of ``nnx.Conv`` for one ``form``.

    A frozen dataclass rather than a ``functools.partial``: equal forms compare and hash equal, so
    two models built alike have equal graph definitions.
    """

    form: str = "auto"

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"conv form must be one of {FORMS}, got {self.form!r}")

    def __call__(self, *args, **kwargs) -> jax.Array:
        return conv_general_dilated(*args, form=self.form, **kwargs)


# ------------------------------------------------------------------------------------ max pool


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(
    x: jax.Array,
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
    """Max pooling of ``x`` [B, H, W, C] (padding with -inf), as PyTorch's ``nn.MaxPool2d``.

    The max over the window's strided slices; its gradient goes, as in PyTorch, to the first
    maximum of each window in row-major order. XLA's own ``reduce_window`` gradient
    (``select_and_scatter``, or Flax's argmax lowering) is several times slower on CPU than the
    whole forward pass of the layer it follows; this form is a handful of elementwise passes.
    """
    return _max_pool_fwd(x, window, strides, padding)[0]


def _max_pool_fwd(x, window, strides, padding):
    fill = jnp.array(-jnp.inf, x.dtype)
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=fill)  # [B, Hp, Wp, C]
    ho = (xp.shape[1] - window[0]) // strides[0] + 1
    wo = (xp.shape[2] - window[1]) // strides[1] + 1
    out = functools.reduce(jnp.maximum, _window_slices(xp, window, strides, (ho, wo)))
    return out, (xp, out)  # [B, Ho, Wo, C]


def _max_pool_bwd(window, strides, padding, residuals, g):
    xp, out = residuals
    ho, wo = out.shape[1:3]
    (sh, sw), (hp, wp) = strides, xp.shape[1:3]
    zero = jnp.zeros((), g.dtype)
    taken = jnp.zeros(out.shape, bool)
    dxp = jnp.zeros(xp.shape, g.dtype)
    for n, a in enumerate(_window_slices(xp, window, strides, (ho, wo))):
        i, j = divmod(n, window[1])
        first = (a == out) & ~taken  # the first maximum of each window, in row-major order
        taken = taken | first
        # The transpose of the strided slice: interior padding puts each entry back in place.
        dxp = dxp + lax.pad(
            jnp.where(first, g, zero),
            zero,
            ((0, 0, 0), (i, hp - i - sh * (ho - 1) - 1, sh - 1),
             (j, wp - j - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)),
        )  # fmt: skip
    (pt, pb), (pl, pr) = padding
    return (dxp[:, pt : hp - pb, pl : wp - pr, :],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
