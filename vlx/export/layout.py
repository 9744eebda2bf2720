"""Weight layouts: vlx parameter paths <-> PyTorch state-dict keys, one table per format.

A table row is (torch key, vlx keys, kind). `kind` names a pair of inverse transforms between
the vlx array(s) and the torch tensor, so one table serves both export and import:
- `copy`: same array; `scalar1`: [] <-> [1];
- `linear`: Flax kernel [in, out] <-> torch weight [out, in];
- `conv`: Flax HWIO <-> torch OIHW;
- `heads_in` / `heads_bias` / `heads_out`: vlx attention [D, H, Dh] / [H, Dh] / [H, Dh, D] <->
  torch [H*Dh, D] / [H*Dh] / [D, H*Dh];
- `fused_in` / `fused_bias`: three vlx q, k, v arrays <-> one fused torch `in_proj` tensor.
vlx keys are dotted paths in the per-layer ("unstacked") model tree, e.g.
`image.encoder.blocks.3.attn.query.kernel`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vlx.errors import ExportError


def _heads_in(x):
    return x.reshape(x.shape[0], -1).T


def _heads_in_back(y, shape):
    return y.T.reshape(shape)


TO_TORCH: dict[str, Callable] = {
    "copy": lambda x: x,
    "scalar1": lambda x: np.reshape(x, (1,)),
    "linear": lambda x: x.T,
    "conv": lambda x: x.transpose(3, 2, 0, 1),
    "heads_in": _heads_in,
    "heads_bias": lambda x: x.reshape(-1),
    "heads_out": lambda x: x.reshape(-1, x.shape[-1]).T,
    "fused_in": lambda q, k, v: np.concatenate([_heads_in(q), _heads_in(k), _heads_in(v)]),
    "fused_bias": lambda q, k, v: np.concatenate([q.reshape(-1), k.reshape(-1), v.reshape(-1)]),
}

FROM_TORCH: dict[str, Callable] = {
    "copy": lambda y, s: y.reshape(s),
    "scalar1": lambda y, s: y.reshape(s),
    "linear": lambda y, s: y.T.reshape(s),
    "conv": lambda y, s: y.transpose(2, 3, 1, 0).reshape(s),
    "heads_in": _heads_in_back,
    "heads_bias": lambda y, s: y.reshape(s),
    "heads_out": lambda y, s: y.T.reshape(s),
    "fused_in": lambda y, *s: [
        _heads_in_back(p, sh) for p, sh in zip(np.split(y, 3), s, strict=True)
    ],
    "fused_bias": lambda y, *s: [p.reshape(sh) for p, sh in zip(np.split(y, 3), s, strict=True)],
}

Row = tuple[str, tuple[str, ...], str]


def block_rows(torch_prefix: str, vlx_prefix: str, names: dict[str, str], fused: bool) -> list[Row]:
    """Rows of one pre-norm transformer block. `names` maps vlx sub-modules (ln1, ln2, attn,
    fc1, fc2, q, k, v, out) to the format's names; `fused`: one in_proj for q, k, v."""
    t, v = torch_prefix, vlx_prefix
    rows: list[Row] = []
    for ln in ("ln1", "ln2"):
        rows += [
            (f"{t}.{names[ln]}.weight", (f"{v}.{ln}.scale",), "copy"),
            (f"{t}.{names[ln]}.bias", (f"{v}.{ln}.bias",), "copy"),
        ]
    rows += attention_rows(f"{t}.{names['attn']}", f"{v}.attn", names, fused)
    for fc in ("fc1", "fc2"):
        rows += [
            (f"{t}.{names[fc]}.weight", (f"{v}.mlp.{fc}.kernel",), "linear"),
            (f"{t}.{names[fc]}.bias", (f"{v}.mlp.{fc}.bias",), "copy"),
        ]
    return rows


def attention_rows(t: str, v: str, names: dict[str, str], fused: bool) -> list[Row]:
    qkv = tuple(f"{v}.{p}" for p in ("query", "key", "value"))
    if fused:
        rows = [
            (f"{t}.in_proj_weight", tuple(f"{p}.kernel" for p in qkv), "fused_in"),
            (f"{t}.in_proj_bias", tuple(f"{p}.bias" for p in qkv), "fused_bias"),
        ]
    else:
        rows = []
        for p, name in zip(qkv, ("q", "k", "v"), strict=True):
            rows += [
                (f"{t}.{names[name]}.weight", (f"{p}.kernel",), "heads_in"),
                (f"{t}.{names[name]}.bias", (f"{p}.bias",), "heads_bias"),
            ]
    return rows + [
        (f"{t}.{names['out']}.weight", (f"{v}.out.kernel",), "heads_out"),
        (f"{t}.{names['out']}.bias", (f"{v}.out.bias",), "copy"),
    ]


def to_torch(rows: list[Row], flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The torch state dict (float32, contiguous) of the vlx arrays in `flat`."""
    out = {}
    for key, sources, kind in rows:
        value = TO_TORCH[kind](*(np.asarray(flat[s], np.float32) for s in sources))
        out[key] = np.array(value, np.float32, order="C")  # (ascontiguousarray makes 0-d 1-d)
    return out


def from_torch(
    rows: list[Row], state: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """vlx arrays (by dotted key) from a torch state dict, shaped like `shapes`."""
    out = {}
    for key, targets, kind in rows:
        tensor = np.asarray(state[key], np.float32)
        expected = [shapes[t] for t in targets]
        try:
            value = FROM_TORCH[kind](tensor, *expected)
        except ValueError:
            raise ExportError(
                f"{key} has shape {list(tensor.shape)}, which does not fit vlx's "
                f"{', '.join(targets)} {' + '.join(map(str, expected))}"
            ) from None
        for target, array in zip(targets, value if len(targets) > 1 else [value], strict=True):
            out[target] = array
    return out
