import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlx import losses, parallel

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def reference(zimg, ztxt, scale, bias, kind):
    """Full-batch NumPy reference (float64)."""
    zimg, ztxt = np.asarray(zimg, np.float64), np.asarray(ztxt, np.float64)
    logits = scale * zimg @ ztxt.T + bias
    n = len(zimg)
    if kind == "softmax":

        def ce(lg):
            m = lg.max(1, keepdims=True)
            lse = (m + np.log(np.exp(lg - m).sum(1, keepdims=True)))[:, 0]
            return np.mean(lse - np.diag(lg))

        return 0.5 * (ce(logits) + ce(logits.T))
    signs = 2 * np.eye(n) - 1
    return -np.sum(np.log(1 / (1 + np.exp(-signs * logits)))) / n


def embeddings(n, e, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, e))
    b = a + 0.7 * rng.normal(size=(n, e))  # correlated, so accuracy is neither 0 nor 1
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return norm(a), norm(b)


def numeric_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f(x)
        flat[i] = old - eps
        down = f(x)
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


CASES = [("softmax", "gather", 0.0), ("sigmoid", "gather", -10.0), ("sigmoid", "ring", -10.0)]


@pytest.mark.parametrize("shape", MESHES)
@pytest.mark.parametrize("kind,impl,bias", CASES)
def test_loss_and_grads_match_full_batch_reference(shape, kind, impl, bias):
    mesh = parallel.make_mesh(dict(zip(parallel.AXES, shape, strict=True)))
    zimg, ztxt = embeddings(32, 8, seed=0)
    scale = 10.0 if kind == "sigmoid" else 14.0
    sharding = parallel.batch_sharding(mesh)
    gi, gt = jax.device_put(zimg, sharding), jax.device_put(ztxt, sharding)

    def f(zi, zt, s, b):
        return losses.contrastive_loss(zi, zt, s, b, kind=kind, impl=impl, mesh=mesh)

    loss, metrics = jax.jit(f)(gi, gt, jnp.float32(scale), jnp.float32(bias))
    np.testing.assert_allclose(loss, reference(zimg, ztxt, scale, bias, kind), rtol=1e-5)

    logits = zimg @ ztxt.T
    diag = np.diag(logits)
    off = logits - np.diag(np.full(32, np.inf))
    np.testing.assert_allclose(metrics["i2t_acc"], np.mean(diag > off.max(1)))
    np.testing.assert_allclose(metrics["t2i_acc"], np.mean(diag > off.max(0)))
    assert 0.0 < float(metrics["i2t_acc"]) < 1.0

    grad = jax.jit(jax.grad(lambda *a: f(*a)[0], argnums=(0, 1, 2, 3)))
    g_img, g_txt, g_scale, g_bias = grad(gi, gt, jnp.float32(scale), jnp.float32(bias))
    zi64, zt64 = zimg.astype(np.float64), ztxt.astype(np.float64)
    ref = lambda which: (
        lambda x: (
            reference(x, zt64, scale, bias, kind)
            if which == 0
            else reference(zi64, x, scale, bias, kind)
        )
    )
    np.testing.assert_allclose(g_img, numeric_grad(ref(0), zi64.copy()), atol=1e-5)
    np.testing.assert_allclose(g_txt, numeric_grad(ref(1), zt64.copy()), atol=1e-5)
    d_scale = (
        reference(zimg, ztxt, scale + 1e-4, bias, kind)
        - reference(zimg, ztxt, scale - 1e-4, bias, kind)
    ) / 2e-4
    np.testing.assert_allclose(g_scale, d_scale, rtol=1e-4, atol=1e-5)
    if kind == "sigmoid":
        d_bias = (
            reference(zimg, ztxt, scale, bias + 1e-4, kind)
            - reference(zimg, ztxt, scale, bias - 1e-4, kind)
        ) / 2e-4
        np.testing.assert_allclose(g_bias, d_bias, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", MESHES)
def test_ring_equals_gathered_sigmoid(shape):
    mesh = parallel.make_mesh(dict(zip(parallel.AXES, shape, strict=True)))
    zimg, ztxt = embeddings(64, 16, seed=1)
    sharding = parallel.batch_sharding(mesh)
    args = (jax.device_put(zimg, sharding), jax.device_put(ztxt, sharding))
    out = {}
    for impl in ("gather", "ring"):
        f = lambda zi, zt, impl=impl: losses.contrastive_loss(
            zi, zt, 10.0, -10.0, kind="sigmoid", impl=impl, mesh=mesh
        )
        out[impl] = jax.jit(jax.value_and_grad(lambda zi, zt, f=f: f(zi, zt)[0], (0, 1)))(*args)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *out.values())
