"""ViT, AddViT (ADD/TDD) and CaptionDenoiser: shapes, dtypes, parameter counts, condition plumbing.

Everything that runs uses tiny configs (8x8 images, width 16); full-size parameter counts use
``nnx.eval_shape`` (no allocation). All networks return float32 logits for both compute dtypes.

Run time: tiny models are built with ``nnx.eval_shape`` and filled with NumPy draws (eager
initialisers compile one kernel per parameter shape), and each forward pass is one module-level
``nnx.jit`` that returns every output a test needs, so equal configs share one compilation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from didiff_jax.models import captioner, vit

K = 10  # classes / vocabulary size in the tiny tests
B = 3
TINY = dict(image_size=8, patch_size=4, width=16, depth=2, num_heads=2)
TINY_ADD = dict(TINY, cond_depth=1, num_class_tokens=2, head_width=32, head_depth=2)
TINY_CAP = dict(
    image_size=8, patch_size=4, width=16, encoder_depth=1, depth=2, num_heads=2, seq_len=5
)
DROP = jnp.array([True, False, True])


def _count(module: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _concrete(x: jax.ShapeDtypeStruct, rng: np.random.Generator, scale: float) -> jax.Array:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.key(int(rng.integers(2**31)))  # an RNG stream (dropout)
    if jnp.issubdtype(x.dtype, jnp.integer):
        return jnp.zeros(x.shape, x.dtype)  # an RNG stream's counter
    return jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype)


def _tiny(builder, seed: int = 0, scale: float = 0.2, **kw) -> nnx.Module:
    """Tiny model with every parameter N(0, scale^2), built abstractly then filled from NumPy.

    Random instead of the real init: the zero-initialised heads would hide the condition.
    """
    model = nnx.eval_shape(lambda: builder(num_classes=K, rngs=nnx.Rngs(0), **kw))
    rng = np.random.default_rng(seed)
    nnx.update(model, jax.tree.map(lambda x: _concrete(x, rng, scale), nnx.state(model)))
    return model


def _images(seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal((B, 8, 8, 3)), jnp.float32)


def _add_inputs(seed: int = 2) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    y_t = rng.standard_normal((B, K))  # [B, K]
    return jnp.asarray(y_t, jnp.float32), jnp.asarray(rng.uniform(size=B), jnp.float32)


@nnx.jit
def _vit_forward(model, images):
    return model(images, train=False)


@nnx.jit
def _add_outputs(model, images, y_t, t, drop):
    """Everything the AddViT tests compare, from one compilation per config."""
    c = model.encode(images, train=False)
    null = model.null_condition(images.shape[0])
    return dict(
        c=c,
        null=null,
        fused=model(images, y_t, t, train=False),
        dropped=model(images, y_t, t, train=False, drop_cond=drop),
        split=model.denoise(y_t, t, c, train=False),
        null_logits=model.denoise(y_t, t, null, train=False),
    )


def _add_run(**kw) -> dict[str, jax.Array]:
    model = _tiny(vit.add_vit_ti16, **{**TINY_ADD, **kw})
    return _add_outputs(model, _images(), *_add_inputs(), DROP)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", sorted(vit.BUILDERS))
def test_builders_shapes_and_dtypes(name, dtype):
    add = name.startswith("add")
    model = _tiny(vit.BUILDERS[name], dtype=dtype, **(TINY_ADD if add else TINY))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    if add:
        outs = _add_outputs(model, _images(), *_add_inputs(), DROP)
        assert outs["c"].shape == (B, 16) and outs["c"].dtype == jnp.float32
        out = outs["fused"]
    else:
        out = _vit_forward(model, _images())
    assert out.shape == (B, K)
    assert out.dtype == jnp.float32  # logits are float32 whatever the compute dtype
    assert bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("name", ["vit_ti16", "add_vit_ti16"])
def test_bfloat16_close_to_float32(name):
    add = name.startswith("add")
    kw = TINY_ADD if add else TINY
    f32 = _tiny(vit.BUILDERS[name], **kw)
    bf16 = _tiny(vit.BUILDERS[name], dtype=jnp.bfloat16, **kw)  # same seed: same parameters
    if add:
        a = _add_outputs(f32, _images(), *_add_inputs(), DROP)["fused"]
        b = _add_outputs(bf16, _images(), *_add_inputs(), DROP)["fused"]
    else:
        a, b = _vit_forward(f32, _images()), _vit_forward(bf16, _images())
    assert float(jnp.max(jnp.abs(a - b))) <= 0.05 * float(jnp.max(jnp.abs(a))) + 0.05


def test_vit_b16_param_count():
    abstract = nnx.eval_shape(lambda: vit.vit_b16(num_classes=1000, rngs=nnx.Rngs(0)))
    assert _count(abstract) == 86_566_888  # 86.6M; timm's layout has 768 more (cls position)


def test_add_vit_b16_param_counts():
    abstract = nnx.eval_shape(lambda: vit.add_vit_b16(num_classes=1000, rngs=nnx.Rngs(0)))
    head, total = _count(abstract.head), _count(abstract)
    assert (head, total) == (21_993_448, 107_792_104)  # the paper: head ~22M, total ~111M


def test_one_encoder_for_the_three_networks():
    """ViT, AddViT and the caption denoiser hold one ``ViTEncoder`` each, with the class tokens
    where the network needs them: ViT one before block 0, ADD ``num_class_tokens`` before the last
    ``cond_depth`` blocks, the captioner none (every image token is part of its condition)."""
    models = {
        "vit": nnx.eval_shape(lambda: vit.vit_ti16(num_classes=K, rngs=nnx.Rngs(0), **TINY)),
        "add": nnx.eval_shape(
            lambda: vit.add_vit_ti16(num_classes=K, rngs=nnx.Rngs(0), **TINY_ADD)
        ),
        "cap": nnx.eval_shape(
            lambda: captioner.caption_tdd(num_classes=K, rngs=nnx.Rngs(0), **TINY_CAP)
        ),
    }
    assert all(isinstance(m.encoder, vit.ViTEncoder) for m in models.values())
    assert models["vit"].encoder.class_tokens.shape == (1, 16)
    assert models["add"].encoder.class_tokens.shape == (2, 16)
    assert (models["vit"].encoder.prefix_at, models["add"].encoder.prefix_at) == (0, 1)
    assert models["cap"].encoder.class_tokens is None
    assert [len(m.encoder.blocks) for m in models.values()] == [2, 2, 1]


def test_vit_overrides_apply():
    abstract = nnx.eval_shape(
        lambda: vit.vit_l16(num_classes=1000, rngs=nnx.Rngs(0), image_size=28, patch_size=4)
    )
    assert abstract.encoder.patch_embed.pos_embed.shape == (49, 1024)
    assert len(abstract.encoder.blocks) == 24


def test_null_condition_changes_add_output():
    outs = _add_run()
    assert outs["null"].shape == outs["c"].shape == (B, 16)
    np.testing.assert_array_equal(np.asarray(outs["null"][0]), np.asarray(outs["null"][1]))
    assert float(jnp.max(jnp.abs(outs["split"] - outs["null_logits"]))) > 1e-3


@pytest.mark.parametrize("cond_pool", ["cls", "mean"])
def test_add_fused_equals_encode_denoise(cond_pool):
    outs = _add_run(cond_pool=cond_pool)
    np.testing.assert_allclose(outs["fused"], outs["split"], rtol=1e-5, atol=1e-5)


def test_add_drop_cond_rows_use_null():
    outs = _add_run()
    expected = jnp.where(DROP[:, None], outs["null_logits"], outs["split"])
    np.testing.assert_allclose(outs["dropped"], expected, rtol=1e-5, atol=1e-5)


def test_add_gradients_reach_encoder_and_head():
    model = _tiny(vit.add_vit_ti16, **TINY_ADD)
    y_t, t = _add_inputs()
    labels = jnp.arange(B) % K

    def loss_fn(m):
        logits = m(_images(), y_t, t, train=True, drop_cond=jnp.array([False, False, True]))
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

    grads = nnx.jit(nnx.grad(loss_fn))(model)
    for g in (
        grads.encoder.patch_embed.conv.kernel,
        grads.encoder.class_tokens,
        grads.null_cond,
        grads.head.final_out.kernel,
    ):
        assert float(jnp.abs(g[...]).max()) > 0


def test_dropout_train_mode():
    model = _tiny(vit.vit_ti16, dropout=0.5, **TINY)
    train = nnx.jit(lambda m, x: m(x, train=True))
    a, b = train(model, _images()), train(model, _images())
    assert float(jnp.max(jnp.abs(a - b))) > 0  # a fresh dropout mask per call
    np.testing.assert_array_equal(_vit_forward(model, _images()), _vit_forward(model, _images()))


def _caption_inputs(kind: str, n: int = 5, seed: int = 3) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    if kind == "caption_tdd":
        x_t = jnp.asarray(rng.standard_normal((B, n, K)), jnp.float32)  # noisy one-hot
    else:
        x_t = jnp.asarray(rng.integers(0, K + 1, (B, n)), jnp.int32)  # K = mask token
    return x_t, jnp.asarray(rng.uniform(size=B), jnp.float32)


@nnx.jit
def _caption_outputs(model, images, x_t, t, drop):
    cond = model.encode(images, train=False)
    null = model.null_condition(images.shape[0])
    return dict(
        cond=cond,
        null=null,
        fused=model(images, x_t, t, train=False),
        dropped=model(images, x_t, t, train=False, drop_cond=drop),
        split=model.denoise(x_t, t, cond, train=False),
        null_logits=model.denoise(x_t, t, null, train=False),
    )


@pytest.mark.parametrize(
    "name,dtype",
    [("caption_tdd", jnp.float32), ("caption_mdd", jnp.float32), ("caption_tdd", jnp.bfloat16)],
)
def test_caption_denoiser(name, dtype):
    model = _tiny(captioner.BUILDERS[name], dtype=dtype, **TINY_CAP)
    outs = _caption_outputs(model, _images(), *_caption_inputs(name), DROP)
    assert outs["cond"].shape == outs["null"].shape == (B, 4, 16)  # (8 / 4)^2 image tokens
    assert outs["fused"].shape == (B, 5, K) and outs["fused"].dtype == jnp.float32
    np.testing.assert_allclose(outs["fused"], outs["split"], rtol=1e-5, atol=1e-5)
    expected = jnp.where(DROP[:, None, None], outs["null_logits"], outs["split"])
    np.testing.assert_allclose(outs["dropped"], expected, rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(outs["null_logits"] - outs["split"]))) > 1e-3


@pytest.mark.parametrize(
    "builders,name,kw",
    [
        (vit.BUILDERS, "vit_b16", TINY),
        (vit.BUILDERS, "add_vit_s16", TINY_ADD),
        (captioner.BUILDERS, "caption_tdd", TINY_CAP),
    ],
)
def test_unknown_override_raises(builders, name, kw):
    with pytest.raises((TypeError, ValueError), match="bogus_option"):
        builders[name](num_classes=K, rngs=nnx.Rngs(0), bogus_option=1, **kw)


def test_caption_needs_seq_len():
    kw = {k: v for k, v in TINY_CAP.items() if k != "seq_len"}
    with pytest.raises(TypeError, match="seq_len"):
        captioner.caption_mdd(num_classes=K, rngs=nnx.Rngs(0), **kw)
