"""The fast layers equal what they replace, outputs and gradients: the convolution forms and max
pooling (XLA's own ops), GroupNorm with its hand-written VJP (``nnx.GroupNorm``)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.linen import max_pool as flax_max_pool
from jax import lax

from didiff_jax.models import conv
from didiff_jax.models.conv import ConvFn, conv_general_dilated, max_pool, select_form
from didiff_jax.models.layers import GroupNorm

DN = ("NHWC", "HWIO", "NHWC")

# (map size, kernel, stride, padding) of every convolution the networks run, 1 px to 224 px:
# ResNet/DiDiRN stems (7x7/s2/p3 at 224 and 32 px, 3x3/s1/p1 at 28 px), 3x3/s1 and 3x3/s2
# convolutions and 1x1/s2 projections down to the 1x1 map of the last stage at 28 px, the ViT
# patch embeddings (4x4/s4 at 28 px, 16x16/s16 at 224 px).
NETWORK_SHAPES = [
    (224, 7, 2, 3), (32, 7, 2, 3), (28, 3, 1, 1), (56, 3, 1, 1), (56, 1, 1, 0), (56, 3, 2, 1),
    (56, 1, 2, 0), (28, 3, 2, 1), (14, 3, 1, 1), (14, 3, 2, 1), (14, 1, 2, 0), (7, 3, 1, 1),
    (7, 3, 2, 1), (7, 1, 2, 0), (7, 1, 1, 0), (4, 3, 1, 1), (4, 3, 2, 1), (4, 1, 2, 0),
    (2, 3, 1, 1), (2, 3, 2, 1), (2, 1, 2, 0), (1, 3, 1, 1), (1, 1, 1, 0), (28, 4, 4, 0),
    (224, 16, 16, 0),
]  # fmt: skip


def _forms_for(k: int, s: int, p: int) -> list[str]:
    forms = ["auto", "im2col"] if k <= 3 else ["auto"]  # auto: patchify for patches on CPU
    if k == 1 and p == 0:
        forms.append("matmul")
    if k == s and p == 0:
        forms.append("patchify")
    return forms


def _outputs_and_grads(fn, x, w):
    y, vjp = jax.vjp(fn, x, w)
    cot = jax.random.normal(jax.random.key(7), y.shape, y.dtype)
    return (y, *vjp(cot))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size,k,s,p", NETWORK_SHAPES)
def test_forms_equal_xla_conv_outputs_and_gradients(size, k, s, p, dtype):
    """Each form's output and input/kernel gradients equal ``lax.conv_general_dilated``'s."""
    with jax.enable_x64(dtype == "float64"):
        cin, cout = (3, 8) if size > 32 else (5, 6)
        batch = 1 if size > 32 else 2
        kx, kw = jax.random.split(jax.random.key(size * 31 + k))
        x = jax.random.normal(kx, (batch, size, size, cin), dtype)
        w = jax.random.normal(kw, (k, k, cin, cout), dtype)
        pad = ((p, p), (p, p))

        def ref(x, w):
            return lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=DN)

        want = _outputs_and_grads(ref, x, w)
        tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == "float64" else {"rtol": 1e-4, "atol": 1e-4}
        for form in _forms_for(k, s, p):

            def fn(x, w, form=form):
                return conv_general_dilated(x, w, (s, s), pad, dimension_numbers=DN, form=form)

            got = _outputs_and_grads(fn, x, w)
            for name, g, r in zip(("output", "d_input", "d_kernel"), got, want, strict=True):
                assert g.dtype == r.dtype and g.shape == r.shape, (form, name)
                np.testing.assert_allclose(g, r, **tol, err_msg=f"{form} {name}")


def test_select_form_rule():
    """On CPU: 1x1 -> matmul, patches -> patchify, output maps of <= 4 px -> im2col, else XLA;
    on GPU/TPU always XLA."""
    same = ((1, 1), (1, 1))
    assert select_form((2, 2), (3, 3), (1, 1), same, "cpu") == "im2col"
    assert select_form((4, 4), (3, 3), (2, 2), same, "cpu") == "im2col"  # onto 2x2
    assert select_form((4, 4), (3, 3), (1, 1), same, "cpu") == "xla"  # 4x4 out: 16 px
    assert select_form((14, 14), (3, 3), (1, 1), same, "cpu") == "xla"
    assert select_form((14, 14), (1, 1), (2, 2), ((0, 0), (0, 0)), "cpu") == "matmul"
    assert select_form((28, 28), (4, 4), (4, 4), ((0, 0), (0, 0)), "cpu") == "patchify"
    for backend in ("gpu", "tpu"):
        for args in [((2, 2), (3, 3), (1, 1), same), ((14, 14), (1, 1), (2, 2), ((0, 0),) * 2)]:
            assert select_form(*args, backend) == "xla"


def test_unusual_convolutions_fall_back_to_xla():
    """Dilation, groups, string padding and other layouts go to ``lax.conv_general_dilated``."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
    kwargs = {"dimension_numbers": DN, "feature_group_count": 2}
    want = lax.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs)
    got = conv_general_dilated(x, w, (1, 1), "SAME", form="im2col", **kwargs)
    np.testing.assert_array_equal(got, want)
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 4))
    want = lax.conv_general_dilated(x, w, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                    dimension_numbers=DN)  # fmt: skip
    got = conv_general_dilated(x, w, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                               dimension_numbers=DN, form="im2col")  # fmt: skip
    np.testing.assert_array_equal(got, want)


def test_bad_forms_are_named():
    with pytest.raises(ValueError, match="conv form must be one of"):
        ConvFn("fast")
    x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
    with pytest.raises(ValueError, match="does not apply"):
        conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN, form="matmul")


def test_conv_fn_compares_by_form():
    """Equal forms are equal (and hash equal): models built alike have equal graph definitions."""
    assert ConvFn("auto") == ConvFn("auto") and hash(ConvFn("xla")) == hash(ConvFn("xla"))
    assert ConvFn("auto") != ConvFn("xla")

    def build():
        return nnx.Conv(2, 3, (3, 3), conv_general_dilated=ConvFn(), rngs=nnx.Rngs(0))

    assert nnx.graphdef(build()) == nnx.graphdef(build())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [3, 4, 7, 14, 28, 112])
def test_max_pool_equals_reduce_window(size, dtype):
    """Output and gradient of the 3x3/s2/p1 stem pool equal Flax's ``max_pool`` (XLA's
    ``reduce_window`` and its gradient, first maximum in row-major order), ties included."""
    with jax.enable_x64(dtype == "float64"):
        x = jax.random.normal(jax.random.key(size), (2, size, size, 3), dtype)
        x = jnp.round(jax.nn.relu(x) * 2) / 2  # ReLU zeros and rounding: many ties per window
        window, strides, pad = (3, 3), (2, 2), ((1, 1), (1, 1))

        def ref(x):
            return flax_max_pool(x, window, strides=strides, padding=pad)

        y_ref, vjp_ref = jax.vjp(ref, x)
        y, vjp = jax.vjp(jax.jit(lambda x: max_pool(x, window, strides, pad)), x)
        np.testing.assert_array_equal(y, y_ref)
        cot = jax.random.normal(jax.random.key(1), y.shape, dtype)
        tol = 1e-12 if dtype == "float64" else 1e-5
        np.testing.assert_allclose(vjp(cot)[0], vjp_ref(cot)[0], rtol=tol, atol=tol)


def test_max_pool_gradient_goes_to_the_first_maximum():
    """All-equal window: the whole gradient lands on its first (top-left) entry, as in PyTorch."""
    x = jnp.ones((1, 3, 3, 1))
    g = jax.grad(lambda x: max_pool(x, (3, 3), (1, 1), ((0, 0), (0, 0))).sum())(x)
    want = np.zeros((1, 3, 3, 1))
    want[0, 0, 0, 0] = 1.0
    np.testing.assert_array_equal(g, want)


@pytest.mark.slow
def test_resnet_forms_agree():
    """A whole DiDiRN-18 at 28 px: ``conv_form='auto'`` equals ``'xla'`` in output and gradient."""
    from didiff_jax.models import create_model

    def build(form):
        return create_model("didirn18", num_classes=10, rngs=nnx.Rngs(0), width=8,
                            in_channels=1, conv_form=form)  # fmt: skip

    images = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    x_t, sigma = jnp.array([0, 3, 5, 9]), jnp.array([0.1, 1.0, 2.0, 5.0])

    def loss(model):
        return jnp.sum(model(images, x_t, sigma, train=True) ** 2)

    results = [nnx.jit(nnx.value_and_grad(loss))(build(form)) for form in ("auto", "xla")]
    (l_auto, g_auto), (l_xla, g_xla) = results
    np.testing.assert_allclose(l_auto, l_xla, rtol=1e-5)
    for a, b in itertools.zip_longest(jax.tree.leaves(g_auto), jax.tree.leaves(g_xla)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
    assert conv.CPU_IM2COL_MAX_OUT_PIXELS >= 4  # the 2x2 last stage at 28 px takes im2col


@pytest.mark.parametrize("channels,groups", [(64, 32), (16, 16), (12, 4), (512, 32)])
def test_group_norm_equals_flax(channels, groups):
    """Output and the gradients of input, scale and bias equal ``nnx.GroupNorm``'s (float64),
    on inputs with a large mean (where E[x^2] - mean^2 loses digits in float32)."""
    with jax.enable_x64(True):
        kwargs = dict(num_groups=groups, epsilon=1e-5, param_dtype=jnp.float64)
        ref = nnx.GroupNorm(channels, rngs=nnx.Rngs(0), **kwargs)
        new = GroupNorm(channels, rngs=nnx.Rngs(0), **kwargs)
        k1, k2, k3, k4 = jax.random.split(jax.random.key(channels), 4)
        for m in (ref, new):
            m.scale[...] = jax.random.normal(k1, (channels,), jnp.float64)
            m.bias[...] = jax.random.normal(k2, (channels,), jnp.float64)
        x = jax.random.normal(k3, (3, 5, 4, channels), jnp.float64) * 2.0 + 3.0
        cot = jax.random.normal(k4, x.shape, jnp.float64)

        def loss(m, x):
            return jnp.sum(m(x) * cot)

        (l_ref, (gm_ref, gx_ref)) = nnx.value_and_grad(loss, argnums=(0, 1))(ref, x)
        (l_new, (gm_new, gx_new)) = nnx.value_and_grad(loss, argnums=(0, 1))(new, x)
        np.testing.assert_allclose(new(x), ref(x), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gx_new, gx_ref, rtol=1e-10, atol=1e-12)
        for name in ("scale", "bias"):
            np.testing.assert_allclose(gm_new[name][...], gm_ref[name][...], rtol=1e-10, atol=1e-12)
        # Masked or other-rank inputs go to nnx.GroupNorm itself.
        x3 = x.reshape(3, 20, channels)
        np.testing.assert_array_equal(new(x3), ref(x3))
