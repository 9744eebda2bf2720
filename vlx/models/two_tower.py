"""The dual encoder: an image tower, a text tower, a learned logit scale and optional bias."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlx.models import layers
from vlx.models.text import TextTransformer
from vlx.models.vit import ViT


def _l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class TwoTower(nnx.Module):
    """`encode_image`/`encode_text` give L2-normalised float32 embeddings.

    The logit scale is stored in log space (CLIP: log(1/0.07); SigLIP: log 10) and clamped to
    `max_logit_scale` (log 100) where it is used; the bias (SigLIP: -10) exists only when
    `logit_bias_init` is set.
    """

    def __init__(self, cfg, *, eos_id: int | None, rngs: nnx.Rngs):
        common = dict(
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            scan=cfg.scan,
            remat=cfg.remat,
            attention=layers.attention_implementation(cfg.attention, cfg.dtype),
        )
        self.image = ViT(cfg.image, embed_dim=cfg.embed_dim, common=common, rngs=rngs)
        self.text = TextTransformer(
            cfg.text, embed_dim=cfg.embed_dim, eos_id=eos_id, common=common, rngs=rngs
        )
        self.max_logit_scale = cfg.max_logit_scale
        self.logit_scale = nnx.Param(jnp.asarray(cfg.logit_scale_init, jnp.float32))
        self.logit_bias = (
            nnx.Param(jnp.asarray(cfg.logit_bias_init, jnp.float32))
            if cfg.logit_bias_init is not None
            else None
        )

    def encode_image(self, images: jax.Array, *, rng: jax.Array | None = None) -> jax.Array:
        """`rng`: training randomness (patch dropout); None in evaluation."""
        return _l2_normalize(self.image(images, rng=rng))

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        return _l2_normalize(self.text(tokens))

    def scale_and_bias(self) -> tuple[jax.Array, jax.Array]:
        """exp(clamped log scale), and the bias (0 when the model has none)."""
        scale = jnp.exp(jnp.minimum(self.logit_scale[...], self.max_logit_scale))
        bias = self.logit_bias[...] if self.logit_bias is not None else jnp.zeros((), jnp.float32)
        return scale, bias

    def __call__(self, images: jax.Array, tokens: jax.Array, *, rng: jax.Array | None = None):
        return self.encode_image(images, rng=rng), self.encode_text(tokens)
