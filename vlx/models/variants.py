"""Transformer size variants by name, as big_vision spells them (`'B'`, `'So400m'`, `'B/16'`)."""

from __future__ import annotations

import dataclasses

from vlx.errors import ConfigError

# name: (width, depth, mlp_dim, heads)
_SIZES: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
}
VARIANTS = tuple(_SIZES)


@dataclasses.dataclass(frozen=True)
class Size:
    width: int
    depth: int
    mlp_dim: int
    heads: int
    patch_size: int | None = None


def resolve(tower_cfg, *, where: str) -> Size:
    """The size of a tower: its `variant` string, with any explicit width/depth/... on top."""
    name, _, patch = tower_cfg.variant.partition("/")
    width, depth, mlp_dim, heads = _SIZES[name]
    get = lambda key, default: default if tower_cfg.get(key) is None else tower_cfg.get(key)
    size = Size(
        width=get("width", width),
        depth=get("depth", depth),
        mlp_dim=get("mlp_dim", mlp_dim),
        heads=get("heads", heads),
        patch_size=get("patch_size", int(patch) if patch else None),
    )
    if size.width % size.heads:
        raise ConfigError(f"{where}: width {size.width} is not divisible by heads {size.heads}")
    return size
