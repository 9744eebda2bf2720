"""Contrastive losses over a batch sharded on the mesh's ('data', 'fsdp') axes.

No device ever holds the global B x B logits:
- `gather` (softmax and sigmoid): each device all-gathers the other tower's embeddings and
  computes its own rows, [B_local, B] (open_clip's local_loss + gather_with_grad).
- `ring` (sigmoid only): text blocks travel around the devices with `ppermute`, so each device
  only ever holds a [B_local, B_local] block (the chunked SigLIP loss).
Gradients flow through the collectives (the all-gather transposes to a reduce-scatter).

Both return the global mean loss and the in-batch accuracies: a row counts as correct when its
positive pair scores strictly higher than every negative.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from vlx.parallel import BATCH_AXES


def contrastive_loss(
    zimg: jax.Array,
    ztxt: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    *,
    kind: str,
    impl: str,
    mesh: Mesh,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """zimg, ztxt: [B, E] normalised embeddings, batch-sharded. kind: softmax | sigmoid."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if impl == "ring":
        local = functools.partial(_sigmoid_ring, shards=shards)
    else:
        local = functools.partial(_gathered, kind=kind)
    fn = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(BATCH_AXES), P(BATCH_AXES), P(), P()),
        out_specs=P(),
    )
    loss, i2t, t2i = fn(zimg, ztxt, scale, bias)
    return loss, {"i2t_acc": i2t, "t2i_acc": t2i}


def _positive_beats_negatives(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per row of logits [b, N]: 1.0 if column `labels` is strictly above all other columns."""
    logits = jax.lax.stop_gradient(logits)
    onehot = jax.nn.one_hot(labels, logits.shape[1], dtype=bool)
    pos = jnp.sum(jnp.where(onehot, logits, 0.0), axis=1)
    neg = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=1)
    return (pos > neg).astype(jnp.float32)


def _gathered(zimg, ztxt, scale, bias, *, kind):
    b = zimg.shape[0]
    img_all = jax.lax.all_gather(zimg, BATCH_AXES, tiled=True)
    txt_all = jax.lax.all_gather(ztxt, BATCH_AXES, tiled=True)
    total = img_all.shape[0]
    labels = jax.lax.axis_index(BATCH_AXES) * b + jnp.arange(b)
    i2t = scale * zimg @ txt_all.T + bias  # this device's images against every text
    t2i = scale * ztxt @ img_all.T + bias  # this device's texts against every image
    if kind == "softmax":
        nll = lambda logits: (
            jax.nn.logsumexp(logits, axis=1)
            - jnp.take_along_axis(logits, labels[:, None], axis=1).squeeze(1)
        )
        loss = jax.lax.psum(jnp.sum(nll(i2t)) + jnp.sum(nll(t2i)), BATCH_AXES) / (2 * total)
    else:
        signs = 2.0 * jax.nn.one_hot(labels, total, dtype=i2t.dtype) - 1.0
        loss = -jax.lax.psum(jnp.sum(jax.nn.log_sigmoid(signs * i2t)), BATCH_AXES) / total
    acc = lambda logits: jax.lax.psum(
        jnp.sum(_positive_beats_negatives(logits, labels)), BATCH_AXES
    )
    return loss, acc(i2t) / total, acc(t2i) / total


def _sigmoid_ring(zimg, ztxt, scale, bias, *, shards):
    b = zimg.shape[0]
    total = b * shards
    diag = jnp.arange(b)
    logits = scale * zimg @ ztxt.T + bias
    signs = 2.0 * jnp.eye(b, dtype=logits.dtype) - 1.0
    loss = -jnp.sum(jax.nn.log_sigmoid(signs * logits))
    # Accuracy bookkeeping: each row's (image's) best negative stays here; each column's
    # (text's) positive score and best negative travel with its text block.
    stopped = jax.lax.stop_gradient(logits)
    masked = jnp.where(signs > 0, -jnp.inf, stopped)
    row_pos, row_neg = stopped[diag, diag], jnp.max(masked, axis=1)
    col_pos, col_neg = row_pos, jnp.max(masked, axis=0)
    perm = [(i, (i + 1) % shards) for i in range(shards)]

    def step(carry, _):
        txt, loss, row_neg, col_pos, col_neg = carry
        txt, col_pos, col_neg = jax.lax.ppermute((txt, col_pos, col_neg), BATCH_AXES, perm)
        logits = scale * zimg @ txt.T + bias
        loss = loss - jnp.sum(jax.nn.log_sigmoid(-logits))
        stopped = jax.lax.stop_gradient(logits)
        row_neg = jnp.maximum(row_neg, jnp.max(stopped, axis=1))
        col_neg = jnp.maximum(col_neg, jnp.max(stopped, axis=0))
        return (txt, loss, row_neg, col_pos, col_neg), None

    carry = (ztxt, loss, row_neg, col_pos, col_neg)
    if shards > 1:
        # Rematerialised: the backward pass recomputes each block's logits instead of keeping
        # all of them, so memory stays one [B_local, B_local] block, not [B_local, B].
        carry, _ = jax.lax.scan(jax.checkpoint(step), carry, None, length=shards - 1)
    _, loss, row_neg, col_pos, col_neg = carry
    psum = lambda x: jax.lax.psum(x, BATCH_AXES)
    i2t = psum(jnp.sum((row_pos > row_neg).astype(jnp.float32))) / total
    t2i = psum(jnp.sum((col_pos > col_neg).astype(jnp.float32))) / total
    return psum(loss) / total, i2t, t2i
