"""A vlx model's arrays as one flat dict with dotted keys, one entry per layer, and back.

Scanned encoders stack their blocks on a leading axis (`image.encoder.blocks.attn.query.kernel`
[L, ...]); here every layer has its own keys (`image.encoder.blocks.3.attn.query.kernel`), so
the export tables, imports and checkpoint conversions need not know whether the model was
scanned.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

BLOCKS = ".encoder.blocks."


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


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
    return _per_layer({k: np.asarray(v) for k, v in _leaves(tree).items()}, list)


def shapes(tree: dict) -> dict[str, tuple[int, ...]]:
    """Per-layer shapes of a nested dict of arrays, shape-dtype structs or array metadata."""
    flat = {k: tuple(getattr(v, "shape", ())) for k, v in _leaves(tree).items()}
    return _per_layer(flat, lambda shape: [shape[1:]] * shape[0])


def put(state: nnx.State, flat: dict[str, np.ndarray]) -> nnx.State:
    """`state` (real or abstract arrays with shardings) with every array whose per-layer keys
    `flat` holds replaced by those values (stacked where `state` stacks layers), each placed on
    the devices and sharding of the array it replaces; the other arrays stay as they are. Every
    process passes the same `flat`."""

    def replace(path, old):
        key = ".".join(str(k.key) for k in path)
        keys = layer_keys(key, old.shape)
        if not all(k in flat for k in keys):
            return old
        new = flat[key] if _stacked(key) is None else np.stack([flat[k] for k in keys])
        return jax.device_put(np.asarray(new, old.dtype), old.sharding)

    tree = jax.tree_util.tree_map_with_path(replace, nnx.to_pure_dict(state))
    out = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(out, tree)
    return out
