"""ViT image tower: patches -> (+class token) -> position embedding -> blocks -> pool -> project."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlx.errors import ConfigError
from vlx.models import layers, variants


def sincos2d(grid: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding [grid*grid, width] (MoCo v3 / big_vision)."""
    if width % 4:
        raise ConfigError(f"model.image: posemb='sincos2d' needs width divisible by 4, got {width}")
    y, x = np.mgrid[:grid, :grid]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1 or 1))
    y = np.einsum("m,d->md", y.ravel(), omega)
    x = np.einsum("m,d->md", x.ravel(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def kept_patches(patches: int, dropout: float) -> int:
    """Patch tokens kept per image in training with patch dropout `dropout` (at least one)."""
    return max(1, int(round(patches * (1.0 - dropout))))


# Pools that read one token; the encoder's last block then computes only that token.
POOLS_ONE_TOKEN = ("tok",)


class PatchEmbed(nnx.Module):
    """Non-overlapping p x p patches to `width` features: the parameters of a stride-p
    convolution (`kernel` [p, p, 3, width] HWIO, optional `bias`), computed as one matmul over
    flattened patches. The same maths as the convolution; XLA's CPU convolution and its kernel
    gradient were 2.5x slower than the matmul."""

    def __init__(self, patch: int, width: int, *, bias: bool, spec: layers.BlockSpec, rngs):
        self.p = patch
        self.dtype = spec.dtype
        init = layers.sharded(nnx.initializers.lecun_normal(), None, None, None, "embed")
        self.kernel = nnx.Param(init(rngs.params(), (patch, patch, 3, width), spec.param_dtype))
        self.bias = (
            nnx.Param(
                layers.sharded(layers.zeros, "embed")(rngs.params(), (width,), spec.param_dtype)
            )
            if bias
            else None
        )

    def __call__(self, images: jax.Array) -> jax.Array:
        """images [B, H, W, 3] -> [B, H/p, W/p, width]."""
        b, h, w, c = images.shape
        p = self.p
        x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, h // p, w // p, p * p * c).astype(self.dtype)
        y = x @ self.kernel[...].reshape(p * p * c, -1).astype(self.dtype)
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class ViT(nnx.Module):
    def __init__(self, cfg, *, embed_dim: int, common: dict, rngs: nnx.Rngs):
        size = variants.resolve(cfg, where="model.image")
        if size.patch_size is None:
            raise ConfigError(
                f"model.image.variant={cfg.variant!r} names no patch size; use e.g. 'B/16' "
                "or set model.image.patch_size"
            )
        if cfg.image_size % size.patch_size:
            raise ConfigError(
                f"model.image.image_size={cfg.image_size} is not a multiple of the patch size "
                f"{size.patch_size}"
            )
        spec = layers.BlockSpec.for_tower(size, cfg, common, causal=False)
        self.grid = cfg.image_size // size.patch_size
        self.pool = cfg.pool
        self.keep = kept_patches(self.grid**2, cfg.patch_dropout)
        self.patch = PatchEmbed(
            size.patch_size, size.width, bias=cfg.patch_bias, spec=spec, rngs=rngs
        )
        init = nnx.initializers.normal(0.02)
        self.cls = (
            nnx.Param(layers.sharded(init, "embed")(rngs.params(), (size.width,)))
            if cfg.class_token
            else None
        )
        tokens = self.grid**2 + (1 if cfg.class_token else 0)
        if cfg.posemb == "learn":
            self.posemb = nnx.Param(
                layers.sharded(init, None, "embed")(rngs.params(), (tokens, size.width))
            )
        else:
            self.posemb = None
            self.fixed_posemb = nnx.Variable(sincos2d(self.grid, size.width))
        self.ln_pre = layers.layer_norm(spec, rngs) if cfg.pre_norm else None
        self.encoder = layers.Encoder(
            spec, size.depth, scan=common["scan"], remat=common["remat"], rngs=rngs
        )
        self.ln_post = layers.layer_norm(spec, rngs)
        self.map_head = layers.MapHead(spec, rngs=rngs) if cfg.pool == "map" else None
        self.proj = layers.projection(cfg, size.width, embed_dim, spec, rngs, where="model.image")

    def __call__(self, images: jax.Array, *, rng: jax.Array | None = None) -> jax.Array:
        """images: float [B, H, W, 3], already normalised. Returns unnormalised [B, E].

        With `rng` (training), patch dropout keeps a random subset of the patch tokens of each
        image (after their position embedding), FLIP-style; without it every patch is kept."""
        x = self.patch(images)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        cls = self.cls is not None
        if self.posemb is None:
            pos = self.fixed_posemb[...]
        else:
            pos = self.posemb[...][1:] if cls else self.posemb[...]
        x = layers.add_position_embedding(x, pos.astype(x.dtype))
        if rng is not None and self.keep < h * w:
            order = jnp.argsort(jax.random.uniform(rng, (b, h * w)), axis=1)
            x = jnp.take_along_axis(x, order[:, : self.keep, None], axis=1)
        if cls:
            token = self.cls[...].astype(x.dtype)
            if self.posemb is not None:
                token = token + self.posemb[...][0].astype(x.dtype)
            # A pad and a select rather than a concatenate along the sequence: the form that
            # compiled to a transpose-free step on an H100 (layers.add_position_embedding).
            x = jnp.pad(x, ((0, 0), (1, 0), (0, 0)))
            x = jnp.where((jnp.arange(x.shape[1]) == 0)[:, None], token, x)
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        keep = 0 if self.pool in POOLS_ONE_TOKEN else None
        x = self.ln_post(self.encoder(x, keep))
        if self.pool == "tok":
            x = x[:, 0]
        elif self.pool == "gap":
            x = jnp.mean(x[:, 1:] if self.cls is not None else x, axis=1)
        else:
            x = self.map_head(x)
        return x if self.proj is None else self.proj(x)
