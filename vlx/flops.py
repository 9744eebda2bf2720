"""Analytic matmul FLOPs of a training step, and device peaks for MFU.

Only matrix multiplications count (2 FLOPs per multiply-add), as in the MFU convention of
PaLM and big_vision: per transformer layer over T tokens of width D with MLP width M,
8*T*D^2 (q, k, v, out) + 4*T*D*M (MLP) + 4*T^2*D (scores and weighted sum). A training step is
3x the forward pass (backward = 2x forward); rematerialisation is not counted, so MFU measures
useful work.
"""

from __future__ import annotations

from vlx.models import variants


def _layer(tokens: int, width: int, mlp: int, kv_tokens: int | None = None) -> int:
    kv = tokens if kv_tokens is None else kv_tokens
    return (
        2 * tokens * width * width * 2  # q and out projections
        + 2 * kv * width * width * 2  # k and v projections
        + 2 * tokens * width * mlp * 2  # MLP in and out
        + 2 * tokens * kv * width * 2  # q @ k^T and attention @ v
    )


def _encoder(depth: int, tokens: int, width: int, mlp: int, *, pruned: bool) -> int:
    """`depth` layers; `pruned`: the last computes only the pooled token (`Encoder(keep=)`)."""
    if not pruned:
        return depth * _layer(tokens, width, mlp)
    return (depth - 1) * _layer(tokens, width, mlp) + _layer(1, width, mlp, kv_tokens=tokens)


def image_forward(model_cfg, *, train: bool = False, executed: bool = True) -> int:
    """FLOPs of one image through the image tower (with projection); in training, patch
    dropout leaves fewer tokens after the patch embedding. `executed=False` counts the last
    layer over every token, as published FLOP counts (open_clip's) do; vlx computes only the
    pooled token there."""
    from vlx.models import vit

    cfg = model_cfg.image
    size = variants.resolve(cfg, where="model.image")
    patches = (cfg.image_size // size.patch_size) ** 2
    kept = vit.kept_patches(patches, cfg.patch_dropout) if train else patches
    tokens = kept + (1 if cfg.class_token else 0)
    d, m = size.width, size.mlp_dim
    flops = 2 * patches * (size.patch_size**2 * 3) * d
    flops += _encoder(size.depth, tokens, d, m, pruned=cfg.pool in vit.POOLS_ONE_TOKEN and executed)
    if cfg.pool == "map":
        flops += _layer(1, d, m, kv_tokens=tokens)
    if cfg.proj:
        flops += 2 * d * model_cfg.embed_dim
    return flops


def text_forward(model_cfg, *, executed: bool = True) -> int:
    """FLOPs of one caption through the text tower (with projection); `executed` as in
    `image_forward`."""
    from vlx.models import text

    cfg = model_cfg.text
    size = variants.resolve(cfg, where="model.text")
    pruned = cfg.pool in text.POOLS_ONE_TOKEN and executed
    flops = _encoder(size.depth, cfg.context_length, size.width, size.mlp_dim, pruned=pruned)
    if cfg.proj:
        flops += 2 * size.width * model_cfg.embed_dim
    return flops


def train_step(model_cfg, batch_size: int, frozen: tuple[str, ...] = ()) -> dict[str, int]:
    """FLOPs of one training step at global `batch_size`: towers and the B x B logits, x3; a
    tower in `frozen` (every parameter frozen, `optim.freeze`) runs forward only, x1. A partly
    frozen tower counts as trained."""
    image = (1 if "image" in frozen else 3) * batch_size * image_forward(model_cfg, train=True)
    text = (1 if "text" in frozen else 3) * batch_size * text_forward(model_cfg)
    loss = 3 * 2 * batch_size * batch_size * model_cfg.embed_dim
    return {"image": image, "text": text, "loss": loss, "total": image + text + loss}


# Dense peak FLOP/s per device (bfloat16; float32 where marked) from vendors' data sheets.
PEAKS: dict[str, dict[str, float]] = {
    "h100": {"bfloat16": 989e12, "float32": 67e12},  # SXM; tf32 tensor cores: 494e12
    "h200": {"bfloat16": 989e12, "float32": 67e12},
    "a100": {"bfloat16": 312e12, "float32": 19.5e12},
    "tpu v4": {"bfloat16": 275e12, "float32": 275e12 / 2},
    "tpu v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 2},  # v5e
    "tpu v5e": {"bfloat16": 197e12, "float32": 197e12 / 2},
    "tpu v5p": {"bfloat16": 459e12, "float32": 459e12 / 2},
    "tpu v5": {"bfloat16": 459e12, "float32": 459e12 / 2},  # v5p reports "TPU v5"
    "tpu v6 lite": {"bfloat16": 918e12, "float32": 918e12 / 2},  # v6e (Trillium)
    "tpu v6e": {"bfloat16": 918e12, "float32": 918e12 / 2},
}


def device_peak(device_kind: str, dtype: str) -> float | None:
    """The peak of a device by its `device_kind` (longest matching name), or None."""
    kind = device_kind.lower()
    for name in sorted(PEAKS, key=len, reverse=True):
        if name in kind:
            return PEAKS[name][dtype]
    return None
