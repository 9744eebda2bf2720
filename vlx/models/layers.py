"""Transformer building blocks shared by the image and text towers.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`, `layers`);
`vlx.parallel.RULES` maps them onto the mesh, so the towers never mention mesh axes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlx.errors import ConfigError
from vlx.parallel import constrain

TOKENS = ("batch", "act_seq", "act_embed")


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU as PyTorch's `nn.GELU()` computes it. `jax.nn.gelu(approximate=False)`
    goes through `erfc`, whose piecewise lowering made the MLPs of a CPU training step 10-15%
    slower; the two agree within 1e-6."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * math.sqrt(0.5)))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu,
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}

REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_saveable,
}

dense_init = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()
ones = nnx.initializers.ones_init()


def sharded(init, *names: str | None):
    """An initializer whose parameter is annotated with logical axis `names`."""
    return nnx.with_partitioning(init, names)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Everything a pre-norm transformer block needs to know; static, hashable."""

    width: int
    mlp_dim: int
    heads: int
    act: str = "gelu"
    ln_eps: float = 1e-5
    causal: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: str = "xla"

    @classmethod
    def for_tower(cls, size, tower_cfg, common: dict, *, causal: bool) -> BlockSpec:
        """The block spec of a tower: its resolved `size`, its config, the shared dtypes."""
        return cls(
            width=size.width,
            mlp_dim=size.mlp_dim,
            heads=size.heads,
            act=tower_cfg.act,
            ln_eps=tower_cfg.ln_eps,
            causal=causal,
            dtype=common["dtype"],
            param_dtype=common["param_dtype"],
            attention=common["attention"],
        )

    def kw(self, rngs: nnx.Rngs) -> dict:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)


def layer_norm(spec: BlockSpec, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        spec.width,
        epsilon=spec.ln_eps,
        scale_init=sharded(ones, "embed"),
        bias_init=sharded(zeros, "embed"),
        **spec.kw(rngs),
    )


def linear(
    din: int, dout: int, names: tuple, rngs: nnx.Rngs, spec: BlockSpec, bias: bool = True
) -> nnx.Linear:
    return nnx.Linear(
        din,
        dout,
        use_bias=bias,
        kernel_init=sharded(dense_init, *names),
        bias_init=sharded(zeros, names[-1]),
        **spec.kw(rngs),
    )


def projection(
    tower_cfg, width: int, embed_dim: int, spec: BlockSpec, rngs: nnx.Rngs, *, where: str
) -> nnx.Linear | None:
    """The tower's projection to the shared embedding, or None when `proj` is off."""
    if tower_cfg.proj:
        return linear(width, embed_dim, ("embed", None), rngs, spec, bias=tower_cfg.proj_bias)
    if width != embed_dim:
        raise ConfigError(
            f"{where}.proj=False needs the tower width {width} to equal model.embed_dim {embed_dim}"
        )
    return None


def token_matmul(x: jax.Array, kernel: jax.Array, bias: jax.Array, *, contract: int) -> jax.Array:
    """x [..., *in] times kernel [*in, *out] plus bias [*out], where `in` is the last `contract`
    axes of x, computed as one [tokens, in] x [in, out] matmul.

    In this flat form every weight gradient contracts a single tokens axis, which XLA's CPU
    backend runs without copying an operand transposed first; the multi-axis `dot_general` of
    `nnx.LinearGeneral` made it copy the output gradient of the q/k/v and output projections
    transposed for each weight gradient. With this form a ViT-S/32 CPU step reads 6.7% fewer
    bytes."""
    n_in = math.prod(kernel.shape[:contract])
    y = x.reshape(-1, n_in) @ kernel.reshape(n_in, -1) + bias.reshape(-1)
    return y.reshape(*x.shape[: x.ndim - contract], *kernel.shape[contract:])


class Attention(nnx.Module):
    """Multi-head attention with separate q/k/v projections of shape [embed, heads, head_dim]."""

    def __init__(self, spec: BlockSpec, *, rngs: nnx.Rngs):
        heads, head_dim = spec.heads, spec.width // spec.heads

        def proj():
            return nnx.LinearGeneral(
                spec.width,
                (heads, head_dim),
                kernel_init=sharded(dense_init, "embed", "heads", "kv"),
                bias_init=sharded(zeros, "heads", "kv"),
                **spec.kw(rngs),
            )

        self.query, self.key, self.value = proj(), proj(), proj()
        self.implementation = spec.attention
        self.out = nnx.LinearGeneral(
            (heads, head_dim),
            spec.width,
            axis=(-2, -1),
            kernel_init=sharded(dense_init, "heads", "kv", "embed"),
            bias_init=sharded(zeros, "embed"),
            **spec.kw(rngs),
        )

    @staticmethod
    def _project(x: jax.Array, *projections: nnx.LinearGeneral) -> tuple[jax.Array, ...]:
        """The projections of `x` computed as one matmul of their stacked kernels, as open_clip's
        fused `in_proj` does: one [tokens, width] x [width, 3 width] GEMM instead of three, and in
        the backward one input gradient instead of three to add up. The parameters stay
        separate (`query`, `key`, `value`), as the checkpoints and exports expect them. They are
        stacked inside the heads axis, [width, heads, 3, head_dim], so that heads split over the
        `tensor` mesh axis stay whole blocks of the flattened [width, 3 width] kernel."""
        first = projections[0]
        kernel = jnp.stack([p.kernel[...] for p in projections], axis=2)
        bias = jnp.stack([p.bias[...] for p in projections], axis=1)
        x, kernel, bias = first.promote_dtype((x, kernel, bias), dtype=first.dtype)
        y = token_matmul(x, kernel, bias, contract=1)
        return tuple(y[..., i, :] for i in range(len(projections)))

    def _output(self, y: jax.Array) -> jax.Array:
        """`self.out` applied to [..., heads, head_dim] as one [tokens, width] matmul."""
        out = self.out
        y, kernel, bias = out.promote_dtype((y, out.kernel[...], out.bias[...]), dtype=out.dtype)
        return token_matmul(y, kernel, bias, contract=2)

    def __call__(
        self,
        x: jax.Array,
        kv: jax.Array | None = None,
        *,
        causal: bool = False,
        kv_lengths: jax.Array | None = None,
    ):
        """`kv_lengths` [batch]: each row attends to its first `kv_lengths` keys only."""
        if kv is None:
            q, k, v = self._project(x, self.query, self.key, self.value)
        else:
            (q,), (k, v) = self._project(x, self.query), self._project(kv, self.key, self.value)
        if self.implementation == "cudnn":
            y = padded_attention(
                q, k, v, causal=causal, implementation="cudnn", kv_lengths=kv_lengths
            )
        else:
            y = xla_attention(q, k, v, causal=causal, kv_lengths=kv_lengths)
        return self._output(y)


def attention_implementation(name: str, dtype: str) -> str:
    """`model.attention` resolved on this machine: `auto` is cuDNN flash attention on GPUs of
    compute capability 8.0+ (A100, H100) computing in bfloat16, XLA's attention elsewhere."""
    if name != "auto":
        return name
    devices = jax.devices()
    gpus_ok = devices[0].platform == "gpu" and all(
        float(getattr(d, "compute_capability", "0")) >= 8.0 for d in devices
    )
    return "cudnn" if gpus_ok and dtype == "bfloat16" else "xla"


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool,
    kv_lengths: jax.Array | None = None,
) -> jax.Array:
    """Softmax attention on [batch, seq, heads, head_dim], computed heads-major.

    The same maths as `jax.nn.dot_product_attention(implementation="xla")` (logits and softmax
    in float32, output in the input dtype), but q, k and v are moved to [batch, heads, seq,
    head_dim] before the two batched matmuls: XLA's CPU backend then runs them without the
    layout copies it adds around the [batch, seq, heads] form, which made a CPU training step's
    attention 15% slower."""
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    scale = np.float32(1.0 / np.sqrt(q.shape[-1]))
    logits = jnp.einsum("bnth,bnsh->bnts", q, k, preferred_element_type=jnp.float32) * scale
    t, s = logits.shape[-2:]
    mask = jnp.tril(jnp.ones((t, s), bool)) if causal else jnp.ones((t, s), bool)
    if kv_lengths is not None:
        mask = mask & (jnp.arange(s) < kv_lengths[:, None, None, None])
    if causal or kv_lengths is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bnts,bnsh->bnth", probs, v).transpose(0, 2, 1, 3)


def padded_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool,
    implementation: str,
    kv_lengths: jax.Array | None = None,
    multiple: int = 16,
) -> jax.Array:
    """Attention on [batch, seq, heads, head_dim] with both sequences padded to a `multiple`
    and the padding masked through sequence lengths; the output is cut back to the query
    length. cuDNN's masked flash-attention training kernels refuse odd lengths (ViT's 197
    tokens, the text's 77). On an H100, ViT-B/16 attention (forward and backward) took 3.98 ms
    padded to multiples of 16, 4.10 ms to 8, 4.18 ms to 32 and 4.36 ms to 64, with the same
    result."""
    t, s, batch = q.shape[1], k.shape[1], q.shape[0]

    def pad(a: jax.Array, n: int) -> jax.Array:
        return jnp.pad(a, ((0, 0), (0, -n % multiple), (0, 0), (0, 0)))

    y = jax.nn.dot_product_attention(
        pad(q, t),
        pad(k, s),
        pad(v, s),
        is_causal=causal,
        query_seq_lengths=jnp.full((batch,), t, jnp.int32),
        key_value_seq_lengths=jnp.full((batch,), s, jnp.int32)
        if kv_lengths is None
        else kv_lengths.astype(jnp.int32),
        implementation=implementation,
    )
    return y[:, :t]


class Mlp(nnx.Module):
    def __init__(self, spec: BlockSpec, *, rngs: nnx.Rngs):
        self.fc1 = linear(spec.width, spec.mlp_dim, ("embed", "mlp"), rngs, spec)
        self.fc2 = linear(spec.mlp_dim, spec.width, ("mlp", "embed"), rngs, spec)
        self.act = ACTIVATIONS[spec.act]

    def __call__(self, x: jax.Array) -> jax.Array:
        """Tokens are flattened to [tokens, width] first: the weight gradients then contract one
        axis instead of (batch, seq), which XLA's CPU backend runs in its fast matmul path
        instead of a transpose plus a slower one (12% faster MLP on CPU)."""
        y = self.fc2(self.act(self.fc1(x.reshape(-1, x.shape[-1]))))
        return y.reshape(*x.shape[:-1], y.shape[-1])


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(ln1 x), then x + mlp(ln2 x)."""

    def __init__(self, spec: BlockSpec, *, rngs: nnx.Rngs):
        self.causal = spec.causal
        self.ln1 = layer_norm(spec, rngs)
        self.attn = Attention(spec, rngs=rngs)
        self.ln2 = layer_norm(spec, rngs)
        self.mlp = Mlp(spec, rngs=rngs)

    def __call__(self, x: jax.Array, keep: jax.Array | int | None = None) -> jax.Array:
        """x [B, T, D] -> [B, T, D]; with `keep` (a position per row, int [B], or one for all
        rows, a scalar), only the token at that position of each row is computed, [B, 1, D]: its
        query attends to all keys (to those up to it when causal), as in the full block."""
        if keep is None:
            x = x + self.attn(self.ln1(x), causal=self.causal)
            return x + self.mlp(self.ln2(x))
        h = self.ln1(x)
        lengths = jnp.broadcast_to(keep + 1, x.shape[:1]) if self.causal else None
        x = pick_token(x, keep) + self.attn(pick_token(h, keep), h, kv_lengths=lengths)
        return x + self.mlp(self.ln2(x))


@jax.custom_vjp
def add_position_embedding(x: jax.Array, pos: jax.Array) -> jax.Array:
    """x [B, T, D] + pos [T, D], with the gradient of `pos` computed as a matmul with a vector
    of ones (accumulated in float32) instead of autodiff's sum over the batch. That sum made
    XLA's GPU backend lay the whole residual stream of both towers out with the batch axis
    inside (sequence-major), which put a transpose around every matmul of every block; without
    it an H100 trains ViT-B/16 14% faster (README, Performance)."""
    return x + pos


def _add_position_embedding_fwd(x, pos):
    return x + pos, None


def _add_position_embedding_bwd(_, g):
    ones = jnp.ones(g.shape[:1], g.dtype)
    return g, jnp.einsum("b,btd->td", ones, g, preferred_element_type=jnp.float32).astype(g.dtype)


add_position_embedding.defvjp(_add_position_embedding_fwd, _add_position_embedding_bwd)


def pick_token(x: jax.Array, position: jax.Array | int) -> jax.Array:
    """x [B, T, D] -> [B, 1, D]: the token at `position` (int [B], or a scalar for all rows).

    A slice when every row reads the same position (the class token), else a one-hot sum, so
    that the gradient is a pad or a select rather than the scatter-add of a gather's."""
    if jnp.ndim(position) == 0:
        return jax.lax.dynamic_slice_in_dim(x, position, 1, axis=1)
    hit = jnp.arange(x.shape[1]) == position[:, None]
    return jnp.sum(jnp.where(hit[:, :, None], x, jnp.zeros((), x.dtype)), axis=1, keepdims=True)


class Encoder(nnx.Module):
    """`depth` blocks, stacked on a leading `layers` axis and scanned when `scan` is set.

    Scanning compiles one block instead of `depth`, which keeps compile time flat in depth;
    `remat` trades recomputation for activation memory (`full`, or `dots`: keep matmul outputs).
    """

    def __init__(self, spec: BlockSpec, depth: int, *, scan: bool, remat: str, rngs: nnx.Rngs):
        if remat != "none" and remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat={remat!r}: choose none, {', '.join(REMAT_POLICIES)}")
        self.scan = scan
        self.remat = remat
        if scan:

            @nnx.split_rngs(splits=depth)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make(rngs):
                return Block(spec, rngs=rngs)

            self.blocks = make(rngs)
        else:
            self.blocks = nnx.List([Block(spec, rngs=rngs) for _ in range(depth)])

    def __call__(self, x: jax.Array, keep: jax.Array | int | None = None) -> jax.Array:
        """x [B, T, D] -> [B, T, D]. With `keep` (int [B], or a scalar for all rows: the one
        position per row that the tower reads after the encoder, e.g. the class or end-of-text
        token), the last block computes only that token, [B, 1, D]; the rest of its work would
        be thrown away."""
        apply = lambda block, x, *keep: constrain(block(x, *keep), TOKENS)
        if self.remat != "none":
            apply = nnx.remat(apply, policy=REMAT_POLICIES[self.remat])
        x = constrain(x, TOKENS)
        if self.scan:
            if keep is None:
                return self._scanned(apply, x, self.blocks)
            graphdef, state = nnx.split(self.blocks)
            head = nnx.merge(graphdef, jax.tree.map(lambda a: a[:-1], state))
            last = nnx.merge(graphdef, jax.tree.map(lambda a: a[-1], state))
            return apply(last, self._scanned(apply, x, head), keep)
        blocks = list(self.blocks)
        for block in blocks if keep is None else blocks[:-1]:
            x = apply(block, x)
        return x if keep is None else apply(blocks[-1], x, keep)

    @staticmethod
    def _scanned(apply, x: jax.Array, blocks) -> jax.Array:
        @nnx.scan(
            in_axes=(nnx.Carry, 0),
            out_axes=nnx.Carry,
            transform_metadata={nnx.PARTITION_NAME: "layers"},
        )
        def body(x, block):
            return apply(block, x)

        return body(x, blocks)


class MapHead(nnx.Module):
    """Multihead attention pooling: a learned probe attends over the tokens, then an MLP."""

    def __init__(self, spec: BlockSpec, *, rngs: nnx.Rngs):
        self.probe = nnx.Param(
            sharded(dense_init, None, None, "embed")(rngs.params(), (1, 1, spec.width))
        )
        self.attn = Attention(spec, rngs=rngs)
        self.ln = layer_norm(spec, rngs)
        self.mlp = Mlp(spec, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        probe = jnp.broadcast_to(self.probe[...], (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        y = self.attn(probe, x)
        y = y + self.mlp(self.ln(y))
        return y[:, 0]
