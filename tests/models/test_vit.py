import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vlx import parallel
from vlx.models import layers, vit


@pytest.mark.parametrize("bias", [False, True])
def test_patch_embedding_is_the_strided_convolution(bias):
    """The matmul over flattened patches computes the stride-p convolution whose HWIO kernel it
    holds (the layout the exports write as a conv weight): same output, same kernel gradient."""
    mesh = parallel.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    spec = layers.BlockSpec(width=24, mlp_dim=48, heads=2)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(parallel.RULES):
        graphdef, state = nnx.split(vit.PatchEmbed(8, 24, bias=bias, spec=spec, rngs=nnx.Rngs(0)))
    kernel = jax.random.normal(jax.random.key(1), (8, 8, 3, 24))
    b = jax.random.normal(jax.random.key(2), (24,)) if bias else None
    images = jax.random.normal(jax.random.key(3), (3, 32, 40, 3))
    w = jax.random.normal(jax.random.key(4), (3, 4, 5, 24))
    assert state["kernel"].shape == kernel.shape

    def conv(kernel):
        y = jax.lax.conv_general_dilated(
            images, kernel, (8, 8), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y if b is None else y + b

    def ours(kernel):
        params = {"kernel": kernel, **({"bias": b} if bias else {})}
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(graphdef, state)(images)

    np.testing.assert_allclose(ours(kernel), conv(kernel), rtol=1e-5, atol=1e-4)
    grad, grad_ref = (jax.grad(lambda k, f=f: jnp.sum(f(k) * w))(kernel) for f in (ours, conv))
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-4)
