"""The device mesh, the logical-axis rules that place parameters on it, and batch shardings.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and optimizer
state sharded along their `embed` dimension), `tensor` (model parallel over `mlp`, `heads`,
`vocab`). The batch is split over `('data', 'fsdp')`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vlx.errors import MeshError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("layers", None),
    ("act_seq", None),
    ("act_embed", None),
)


def logical_spec(names: Sequence[str | None]) -> P:
    """The PartitionSpec that `RULES` give to an array with logical axis `names`."""
    rules = dict(RULES)
    return P(*(rules[n] if n is not None else None for n in names))


def traced_on(mesh: Mesh, fn):
    """`fn` traced with `mesh` as the abstract mesh, so that `constrain` inside it takes effect."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return wrapped


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pins an activation's sharding by logical axis names; a no-op outside a mesh context."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(names))


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """Sizes of (data, fsdp, tensor); one axis may be -1 to take the remaining devices."""
    sizes = [int(mesh_cfg[a]) for a in AXES]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise MeshError(
                f"mesh {dict(zip(AXES, sizes, strict=True))}: the fixed axes multiply to {known}, "
                f"which does not divide the {num_devices} devices"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise MeshError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
            f"devices, but there are {num_devices}; set the sizes to multiply to {num_devices} "
            "or make one of them -1"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)


def batch_size_per_process(global_batch: int, mesh: Mesh) -> int:
    """Checks that the global batch splits over the batch axes and the processes."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % shards:
        raise MeshError(
            f"batch_size={global_batch} does not divide over the {shards} batch shards "
            f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); use a multiple of "
            f"{shards}"
        )
    processes = jax.process_count()
    if global_batch % processes:
        raise MeshError(f"batch_size={global_batch} does not divide over {processes} processes")
    return global_batch // processes


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's slice of the batch into globally sharded arrays."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }
