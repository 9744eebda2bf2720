import functools
import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax._src.cudnn import fused_attention_stablehlo

from tests.helpers import tiny_config
from vlx import config as vlx_config
from vlx import optim, parallel, train
from vlx.errors import ConfigError
from vlx.models import layers, variants


def _qkvw(t: int, s: int, dtype=jnp.float32):
    kq, kk, kv, kw = jax.random.split(jax.random.key(t + s), 4)
    q = jax.random.normal(kq, (2, t, 4, 16), dtype)
    k, v = (jax.random.normal(key, (2, s, 4, 16), dtype) for key in (kk, kv))
    return q, k, v, jax.random.normal(kw, (2, t, 4, 16))


def _value_and_grads(attention, q, k, v, w):
    def loss(q, k, v):
        return jnp.sum(attention(q, k, v).astype(jnp.float32) * w)

    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


def _jax_attention(causal):
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal)


@pytest.mark.parametrize(
    "t,s,causal", [(197, 197, False), (77, 77, True), (1, 196, False), (64, 64, True)]
)
def test_padded_attention_equals_plain_attention_and_its_gradient(t, s, causal):
    """The padding cuDNN needs (to multiples of 16, masked by sequence lengths) changes
    nothing: same output and gradients as unpadded attention (run here with XLA's kernel)."""
    q, k, v, w = _qkvw(t, s)

    def padded(q, k, v):
        return layers.padded_attention(q, k, v, causal=causal, implementation="xla")

    ref, ref_grads = _value_and_grads(_jax_attention(causal), q, k, v, w)
    out, grads = _value_and_grads(padded, q, k, v, w)
    assert padded(q, k, v).shape == (2, t, 4, 16)
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, g_ref, atol=1e-5)


@pytest.mark.parametrize(
    "t,s,causal,dtype",
    [
        (50, 50, False, "float32"),
        (77, 77, True, "float32"),
        (1, 49, False, "float32"),
        (77, 77, True, "bfloat16"),
    ],
)
def test_xla_attention_equals_jax_attention_and_its_gradient(t, s, causal, dtype):
    """vlx's heads-major XLA attention is jax.nn.dot_product_attention's maths: outputs and
    q/k/v gradients agree to float32 rounding, and to bfloat16 rounding in bfloat16."""
    q, k, v, w = _qkvw(t, s, jnp.dtype(dtype))

    def ours(q, k, v):
        return layers.xla_attention(q, k, v, causal=causal)

    ref, ref_grads = _value_and_grads(_jax_attention(causal), q, k, v, w)
    out, grads = _value_and_grads(ours, q, k, v, w)
    assert ours(q, k, v).dtype == q.dtype
    tol = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(out, ref, rtol=tol)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        g, g_ref = np.asarray(g, np.float32), np.asarray(g_ref, np.float32)
        assert np.linalg.norm(g - g_ref) <= tol * np.linalg.norm(g_ref)


def test_gelu_is_the_exact_erf_gelu():
    """`layers.gelu` (erf form, as torch's nn.GELU) equals jax's exact GELU (erfc form) in
    value and derivative, including the tails."""
    x = jnp.linspace(-12.0, 12.0, 20_001)
    exact = functools.partial(jax.nn.gelu, approximate=False)
    np.testing.assert_allclose(layers.gelu(x), exact(x), atol=2e-6)
    grad, grad_ref = (jax.vmap(jax.grad(f))(x) for f in (layers.gelu, exact))
    np.testing.assert_allclose(grad, grad_ref, atol=2e-6)
    assert layers.ACTIVATIONS["gelu"] is layers.gelu


def test_auto_attention_is_xla_off_gpu_and_cudnn_needs_bfloat16():
    assert layers.attention_implementation("auto", "bfloat16") == "xla"  # tests run on CPU
    assert layers.attention_implementation("cudnn", "bfloat16") == "cudnn"
    with pytest.raises(ConfigError, match="model.attention='cudnn' needs model.dtype='bfloat16'"):
        tiny_config(model=dict(attention="cudnn"))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
@pytest.mark.parametrize("t,causal", [(197, False), (77, True)])
def test_cudnn_attention_matches_float32_xla_attention(t, causal):
    """On a GPU: cuDNN flash attention in bf16 against XLA's in float32, output and gradients
    within bf16 rounding (measured 3e-3 to 5e-3 relative on an H100)."""
    q, k, v, w = (
        jax.random.normal(key, (8, t, 12, 64)) for key in jax.random.split(jax.random.key(t), 4)
    )

    def grads(implementation):
        def loss(q, k, v):
            if implementation == "cudnn":
                q, k, v = (a.astype(jnp.bfloat16) for a in (q, k, v))
                y = layers.padded_attention(q, k, v, causal=causal, implementation="cudnn")
            else:
                y = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
            return jnp.sum(y.astype(jnp.float32) * w), y

        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        (_, y), g = fn(q, k, v)
        return [np.asarray(a, np.float32) for a in (y, *g)]

    for got, ref in zip(grads("cudnn"), grads("xla"), strict=True):
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-2


@pytest.mark.parametrize(
    "cfg",
    [
        lambda: tiny_config(model=dict(attention="cudnn", dtype="bfloat16", scan=True)),
        lambda: vlx_config.load(  # as launch/bench_gpu.sh runs it
            "configs/clip_vit_b16.py",
            [
                "--config.model.scan=false",
                "--config.batch_size=256",
                "--config.model.attention=cudnn",
            ],
        ),
    ],
    ids=["tiny-scanned", "clip_vit_b16-unrolled"],
)
def test_cudnn_train_step_lowers_for_an_h100_on_a_cpu(cfg, monkeypatch):
    """The GPU path, checked where there is no GPU: the train step with `model.attention=
    'cudnn'` traces and lowers for CUDA (JAX checks cuDNN's shape, dtype, layout and mask
    constraints as it does), with cuDNN flash attention forward and backward in every block of
    both towers: the image's padded (197 tokens to 208 at B/16), the text's causal, and the
    pruned last blocks' one query (padded to 16), the text's masked by key lengths. JAX asks
    the installed cuDNN for its version and the GPU for its compute capability; a CPU has
    neither, so the test answers as cuDNN 9.8 on an H100 would."""
    monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 90800)
    monkeypatch.setattr(
        fused_attention_stablehlo,
        "check_compute_capability",
        lambda capability: tuple(map(int, capability.split("."))) <= (9, 0),
    )
    cfg = cfg()
    mesh = parallel.make_mesh(cfg.mesh)
    tx, lr = optim.make(cfg.optim, cfg.total_steps)
    state = train.create_state(cfg, mesh, eos_id=2, tx=tx, abstract=True)
    step = train.make_train_step(cfg, mesh, state, lr)
    traced = step.trace(state.arrays, train.abstract_batch(cfg, mesh))
    traced.lower(lowering_platforms=("cuda",))
    calls = re.findall(
        r"dot_product_attention_(fwd|bwd)_wrapper\[[^\]]*?mask_type=MaskType\.(\w+)",
        str(traced.jaxpr),
    )
    image, text = (variants.resolve(t, where="").depth for t in (cfg.model.image, cfg.model.text))
    blocks = {"PADDING": image + 1, "PADDING_CAUSAL": text - 1}  # + 1: the pruned text block
    assert Counter(calls) == {(d, m): n for d in ("fwd", "bwd") for m, n in blocks.items()}


@pytest.mark.parametrize(
    "scan,causal,remat,per_row",
    [
        (True, True, "none", True),
        (False, True, "none", True),
        (True, False, "full", True),
        (False, False, "none", False),
        (True, True, "full", False),
    ],
)
def test_encoder_computes_only_the_kept_token_in_its_last_block(scan, causal, remat, per_row):
    """`keep` (the pooled position per row, or one for all rows) prunes the last block to that
    token: the result and the parameter gradients equal those of the full encoder read there."""
    mesh = parallel.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    spec = layers.BlockSpec(width=32, mlp_dim=64, heads=4, causal=causal)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(parallel.RULES):
        encoder = layers.Encoder(spec, 3, scan=scan, remat=remat, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(encoder)
    x = jax.random.normal(jax.random.key(1), (4, 9, 32))
    keep = jnp.array([8, 0, 3, 5]) if per_row else 3
    rows = jnp.broadcast_to(keep, (4,))

    def pruned(params):
        return nnx.merge(graphdef, params)(x, keep)[:, 0]

    def full(params):
        y = nnx.merge(graphdef, params)(x)
        return jnp.take_along_axis(y, rows[:, None, None], axis=1)[:, 0]

    w = jax.random.normal(jax.random.key(2), (4, 32))
    assert nnx.merge(graphdef, params)(x, keep).shape == (4, 1, 32)
    np.testing.assert_allclose(pruned(params), full(params), atol=2e-5)
    grads, grads_ref = (
        jax.jit(jax.grad(lambda p, f=f: jnp.sum(f(p) * w)))(params) for f in (pruned, full)
    )
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(g, g_ref, atol=2e-5)


@pytest.mark.parametrize("t,causal", [(1, False), (9, True)])
def test_key_lengths_mask_the_same_keys_in_both_attentions(t, causal):
    """`kv_lengths` (how the pruned last block limits a causal query to the keys before it):
    XLA attention and padded attention both equal jax.nn.dot_product_attention's
    key_value_seq_lengths."""
    q, k, v, w = _qkvw(t, 9)
    lengths = jnp.array([9, 4])

    def ref(q, k, v):
        return jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, key_value_seq_lengths=lengths
        )

    def xla(q, k, v):
        return layers.xla_attention(q, k, v, causal=causal, kv_lengths=lengths)

    def padded(q, k, v):
        return layers.padded_attention(
            q, k, v, causal=causal, implementation="xla", kv_lengths=lengths
        )

    expected, expected_grads = _value_and_grads(ref, q, k, v, w)
    for attention in (xla, padded):
        out, grads = _value_and_grads(attention, q, k, v, w)
        np.testing.assert_allclose(out, expected, rtol=1e-5)
        for g, g_ref in zip(grads, expected_grads, strict=True):
            np.testing.assert_allclose(g, g_ref, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 1e-2)])
def test_position_embedding_gradient_equals_autodiffs_batch_sum(dtype, tol):
    """`add_position_embedding` (its `pos` gradient a matmul with ones, for GPU layouts) gives
    the same output and gradients as `x + pos` differentiated by JAX."""
    kx, kp, kw = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (6, 5, 8), dtype)
    pos = jax.random.normal(kp, (5, 8), dtype)
    w = jax.random.normal(kw, (6, 5, 8), dtype)

    def grads(add):
        loss = lambda x, pos: jnp.sum((add(x, pos) * w).astype(jnp.float32) ** 2)
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, pos)

    (got, got_grads), (ref, ref_grads) = grads(layers.add_position_embedding), grads(jnp.add)
    np.testing.assert_allclose(got, ref, rtol=tol)
    for g, g_ref in zip(got_grads, ref_grads, strict=True):
        assert g.dtype == g_ref.dtype
        np.testing.assert_allclose(np.float32(g), np.float32(g_ref), rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "dtype,cross", [(jnp.float32, False), (jnp.float32, True), (jnp.bfloat16, False)]
)
def test_fused_attention_projections_equal_the_separate_layers_and_their_gradients(dtype, cross):
    """Attention computes q, k and v as one matmul of their stacked kernels (k and v alone for
    cross-attention) and the output projection on [tokens, width]: the output, its dtype and
    every parameter's gradient equal those of the `nnx.LinearGeneral` layers called apart."""
    mesh = parallel.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    spec = layers.BlockSpec(width=32, mlp_dim=64, heads=4, dtype=dtype)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(parallel.RULES):
        attn = layers.Attention(spec, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(attn)
    x = jax.random.normal(jax.random.key(1), (3, 5, 32))
    kv = jax.random.normal(jax.random.key(3), (3, 7, 32)) if cross else None
    w = jax.random.normal(jax.random.key(2), (3, 5, 32))

    def fused(params):
        return nnx.merge(graphdef, params)(x, kv)

    def apart(params):
        a = nnx.merge(graphdef, params)
        source = x if kv is None else kv
        y = layers.xla_attention(a.query(x), a.key(source), a.value(source), causal=False)
        return a.out(y)

    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    assert fused(params).dtype == apart(params).dtype == dtype
    np.testing.assert_allclose(fused(params).astype(float), apart(params).astype(float), atol=tol)
    grads, grads_ref = (
        jax.grad(lambda p, f=f: jnp.sum(f(p).astype(jnp.float32) * w))(params)
        for f in (fused, apart)
    )
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(g, g_ref, atol=tol * 10, rtol=tol)
