"""Text transformer tower: tokens + learned positions -> blocks -> pool -> project."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlx.errors import ConfigError
from vlx.models import layers, variants
from vlx.parallel import constrain

# Pools that read one token; the encoder's last block then computes only that token.
POOLS_ONE_TOKEN = ("eos", "last", "first")


def pool_position(tokens: jax.Array, how: str, eos_id: int | None) -> jax.Array | int | None:
    """The position that pooling `how` reads from tokens [B, L]: per row, int [B], for `eos`;
    one int for all rows for `last` and `first` (the pruned last block then slices it); None
    for `mean`."""
    if how not in POOLS_ONE_TOKEN:
        return None
    length = tokens.shape[1]
    if how == "eos":
        # First end-of-text position; a row without one falls back to the last position.
        is_eos = tokens == eos_id
        return jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1), length - 1)
    return length - 1 if how == "last" else 0


def embed_tokens(table: jax.Array, tokens: jax.Array) -> jax.Array:
    """table [V, D] (vocab over `tensor`, embed over `fsdp`), tokens int [B, L] -> [B, L, D].

    The table's embed axis is gathered first, as FSDP gathers every weight before use, so each
    device looks up only its own rows of the batch; with the vocabulary split over `tensor`,
    each device looks up the tokens in its part and the parts are summed (Megatron's
    vocabulary-parallel embedding). Left to sharding propagation, XLA looked up the whole
    global batch on every device of a mesh with both `data` and `fsdp` (or `tensor`) axes, and
    resharded the result and its gradient by its "last resort" of a full rematerialisation.

    Looked up in the parameter dtype (the caller casts): the gradient's scatter-add then runs
    in float32 (a bfloat16 one took 4.8 ms of an H100 ViT-B/16 step at batch 768).
    """
    table = constrain(table, ("vocab", None))
    x = jnp.take(table, constrain(tokens, ("batch", None)), axis=0)
    return constrain(x, layers.TOKENS)


class TextTransformer(nnx.Module):
    def __init__(self, cfg, *, embed_dim: int, eos_id: int | None, common: dict, rngs: nnx.Rngs):
        size = variants.resolve(cfg, where="model.text")
        if cfg.pool == "eos" and eos_id is None:
            raise ConfigError("model.text.pool='eos' needs a tokenizer with an end-of-text token")
        spec = layers.BlockSpec.for_tower(size, cfg, common, causal=cfg.causal)
        self.pool = cfg.pool
        self.eos_id = eos_id
        self.embed = nnx.Embed(
            cfg.vocab_size,
            size.width,
            embedding_init=layers.sharded(nnx.initializers.normal(0.02), "vocab", "embed"),
            dtype=spec.param_dtype,
            param_dtype=spec.param_dtype,
            rngs=rngs,
        )
        self.dtype = spec.dtype
        self.posemb = nnx.Param(
            layers.sharded(nnx.initializers.normal(0.01), None, "embed")(
                rngs.params(), (cfg.context_length, size.width)
            )
        )
        self.encoder = layers.Encoder(
            spec, size.depth, scan=common["scan"], remat=common["remat"], rngs=rngs
        )
        self.ln_final = layers.layer_norm(spec, rngs)
        self.proj = layers.projection(cfg, size.width, embed_dim, spec, rngs, where="model.text")

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """tokens: int [B, L]. Returns unnormalised [B, E]."""
        x = embed_tokens(self.embed.embedding[...], tokens).astype(self.dtype)
        x = layers.add_position_embedding(x, self.posemb[...].astype(x.dtype)[: tokens.shape[1]])
        keep = pool_position(tokens, self.pool, self.eos_id)
        x = self.ln_final(self.encoder(x, keep))
        x = jnp.mean(x, axis=1) if keep is None else x[:, 0]
        return x if self.proj is None else self.proj(x)
