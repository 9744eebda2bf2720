import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import tiny_config
from vlx.errors import ConfigError
from vlx.models import layers


@pytest.mark.parametrize(
    "t,s,causal", [(197, 197, False), (77, 77, True), (1, 196, False), (64, 64, True)]
)
def test_padded_attention_equals_plain_attention_and_its_gradient(t, s, causal):
    """The padding cuDNN needs (to multiples of 64, masked by sequence lengths) changes
    nothing: same output and gradients as unpadded attention (run here with XLA's kernel)."""
    kq, kk, kv, kw = jax.random.split(jax.random.key(t + s), 4)
    q = jax.random.normal(kq, (2, t, 4, 16))
    k, v = (jax.random.normal(key, (2, s, 4, 16)) for key in (kk, kv))
    w = jax.random.normal(kw, (2, t, 4, 16))

    def loss(attention, q, k, v):
        return jnp.sum(attention(q, k, v) * w)

    def plain(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal)

    def padded(q, k, v):
        return layers.padded_attention(q, k, v, causal=causal, implementation="xla")

    ref, ref_grads = jax.value_and_grad(lambda *a: loss(plain, *a), argnums=(0, 1, 2))(q, k, v)
    out, grads = jax.value_and_grad(lambda *a: loss(padded, *a), argnums=(0, 1, 2))(q, k, v)
    assert padded(q, k, v).shape == (2, t, 4, 16)
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    for g, g_ref in zip(grads, ref_grads, strict=True):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, g_ref, atol=1e-5)


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
