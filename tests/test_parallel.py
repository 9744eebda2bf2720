import jax
import pytest

from vlx import parallel
from vlx.errors import MeshError


def test_fill_axis_and_errors():
    assert parallel.mesh_shape(dict(data=-1, fsdp=2, tensor=1), 8) == (4, 2, 1)
    assert parallel.mesh_shape(dict(data=2, fsdp=2, tensor=2), 8) == (2, 2, 2)
    with pytest.raises(MeshError, match="fixed axes multiply to 3, which does not divide the 8"):
        parallel.mesh_shape(dict(data=-1, fsdp=3, tensor=1), 8)
    with pytest.raises(MeshError, match=r"data=2 x fsdp=2 x tensor=1 = 4 devices, but there are 8"):
        parallel.mesh_shape(dict(data=2, fsdp=2, tensor=1), 8)


def test_batch_must_divide_batch_shards():
    mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
    assert parallel.batch_size_per_process(12, mesh) == 12
    with pytest.raises(MeshError, match="batch_size=10 does not divide over the 4 batch shards"):
        parallel.batch_size_per_process(10, mesh)


def test_global_batch_is_sharded_over_data_and_fsdp():
    import numpy as np

    mesh = parallel.make_mesh(dict(data=2, fsdp=4, tensor=1))
    batch = parallel.global_batch({"x": np.arange(16 * 3).reshape(16, 3)}, mesh)
    assert batch["x"].shape == (16, 3)
    assert {s.data.shape for s in batch["x"].addressable_shards} == {(2, 3)}
    assert len(jax.devices()) == 8


def test_activations_are_constrained_inside_traced_functions():
    import jax.numpy as jnp

    mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
    f = parallel.traced_on(mesh, lambda x: parallel.constrain(x * 2, ("batch", "act_embed")))
    text = jax.jit(f).lower(jnp.ones((8, 4))).as_text()
    assert "sharding_constraint" in text and '{"data", "fsdp"}' in text
    assert parallel.constrain(jnp.ones(3), ("batch",)).shape == (3,)  # no mesh: a no-op
