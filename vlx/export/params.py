"""A vlx model's arrays as one flat dict with dotted keys, one entry per layer, and back.

Scanned encoders stack their blocks on a leading axis (`image.encoder.blocks.attn.query.kernel`
[L, ...]); here every layer has its own keys (`image.encoder.blocks.3.attn.query.kernel`), so
the export tables, imports and checkpoint conversions need not know whether the model was
scanned.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

BLOCKS = ".encoder.blocks."


def leaves(tree) -> dict:
    """{dotted key: leaf} of a nested tree of arrays (or shape structs, or array metadata); a
    list index and a dict key give the same key."""
    return {_key(p): x for p, x in _with_paths(tree)}


def _stacked(key: str) -> tuple[str, str] | None:
    """(head, tail) of a key of stacked (scanned) layers, else None."""
    head, sep, tail = key.partition(BLOCKS)
    return (head, tail) if sep and not tail.split(".")[0].isdigit() else None


def layer_keys(key: str, shape: tuple[int, ...]) -> list[str]:
    """The per-layer keys of the array `key` of `shape`: one per layer where it stacks layers."""
    parts = _stacked(key)
    if parts is None:
        return [key]
    return [f"{parts[0]}{BLOCKS}{i}.{parts[1]}" for i in range(shape[0])]


def _per_layer(flat: dict, split) -> dict:
    out = {}
    for key, value in flat.items():
        if _stacked(key) is None:
            out[key] = value
            continue
        layers = split(value)
        out.update(zip(layer_keys(key, (len(layers),)), layers, strict=True))
    return out


def flatten(tree: dict) -> dict[str, np.ndarray]:
    """Nested dict of arrays -> {dotted key: numpy array}, scanned layers unstacked."""
    return _per_layer({k: np.asarray(v) for k, v in leaves(tree).items()}, list)


def shapes(tree: dict) -> dict[str, tuple[int, ...]]:
    """Per-layer shapes of a nested dict of arrays, shape-dtype structs or array metadata."""
    flat = {k: tuple(getattr(v, "shape", ())) for k, v in leaves(tree).items()}
    return _per_layer(flat, _layer_shapes)


def put(state: nnx.State, flat: dict[str, np.ndarray]) -> nnx.State:
    """`state` (real or abstract arrays with shardings) with every array whose per-layer keys
    `flat` holds replaced by those values (stacked where `state` stacks layers), each placed on
    the devices and sharding of the array it replaces; the other arrays stay as they are. Every
    process passes the same `flat`."""
    new = {}
    for key, old in _targets(state, flat).items():
        value = flat[key] if _stacked(key) is None else np.stack(_layers(flat, key, old.shape))
        new[key] = jax.device_put(np.asarray(value, old.dtype), old.sharding)
    return _replaced(state, new)


def sharded_like(saved, state: nnx.State):
    """Abstract arrays for `saved` (a checkpoint's array metadata, a subtree of `state`'s
    arrays), each sharded like what it becomes in `state`, also where the checkpoint stores the
    encoders' layers the other way: a stacked array like its layers, its layer axis whole; one
    layer like its stacked array, without the layer axis. Orbax reads into these directly, each
    process only its own shards."""
    shardings = {k: x.sharding for k, x in leaves(nnx.to_pure_dict(state)).items()}

    def struct(path, meta):
        key = _key(path)
        if key in shardings:
            sharding = shardings[key]
        elif _stacked(key) is not None:
            layer = shardings[layer_keys(key, meta.shape)[0]]
            sharding = NamedSharding(layer.mesh, P(None, *layer.spec))
        else:
            stacked = shardings[_stacked_key(key)]
            sharding = NamedSharding(stacked.mesh, P(*stacked.spec[1:]))
        return jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=sharding)

    return jax.tree_util.tree_map_with_path(struct, saved)


def relayout(state: nnx.State, saved) -> nnx.State:
    """`state` with every array that `saved` (device arrays of a subtree of the same model or
    optimizer, read by `sharded_like`, its layers stacked or not) holds, converted to `state`'s
    layer layout in one program on the devices and placed like the array it replaces; the other
    arrays stay as they are. No process holds more than its shards."""
    flat = leaves(saved)
    targets = _targets(state, _per_layer({k: x.shape for k, x in flat.items()}, _layer_shapes))

    def convert(flat):
        layers = _per_layer(flat, list)
        return {
            key: (
                layers[key] if _stacked(key) is None else jnp.stack(_layers(layers, key, x.shape))
            ).astype(x.dtype)
            for key, x in targets.items()
        }

    shardings = {key: x.sharding for key, x in targets.items()}
    return _replaced(state, jax.jit(convert, out_shardings=shardings)(flat))


def _targets(state: nnx.State, available) -> dict:
    """The arrays of `state` (by key) whose every layer `available` (per-layer keys) has."""
    return {
        key: x
        for key, x in leaves(nnx.to_pure_dict(state)).items()
        if all(k in available for k in layer_keys(key, x.shape))
    }


def _replaced(state: nnx.State, new: dict) -> nnx.State:
    tree = jax.tree_util.tree_map_with_path(
        lambda path, old: new.get(_key(path), old), nnx.to_pure_dict(state)
    )
    out = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(out, tree)
    return out


def _layers(flat: dict, key: str, shape: tuple[int, ...]) -> list:
    return [flat[k] for k in layer_keys(key, shape)]


def _layer_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    return [shape[1:]] * shape[0]


def _stacked_key(key: str) -> str | None:
    """'image.encoder.blocks.3.mlp.fc1.kernel' -> 'image.encoder.blocks.mlp.fc1.kernel', the
    key of the stacked array that holds this layer; None for a key of no single layer."""
    head, sep, tail = key.partition(BLOCKS)
    index, _, rest = tail.partition(".")
    return f"{head}{BLOCKS}{rest}" if sep and index.isdigit() else None


def _with_paths(tree) -> list:
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def _key(path) -> str:
    """The dotted key of a tree path; a list index and a dict key give the same string."""
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
