"""Analytic matmul FLOPs of a training step, and device peaks for MFU.

Only matrix multiplications count (2 FLOPs per multiply-add), as in the MFU convention of
PaLM and big_vision: per transformer layer over T tokens of width D with MLP width M,
8*T*D^2 (q, k, v, out) + 4*T*D*M (MLP) + 4*T^2*D (scores and weighted sum). A training step is
3x the forward pass (backward = 2x forward); rematerialisation is not counted, so MFU measures
useful work. Frozen parameters (`optim.freeze`) count only the backward work they still cause
(`train_step`).
"""

from __future__ import annotations

import re
from collections.abc import Collection

from vlx.models import variants

Stage = tuple[int, int]  # FLOPs of weight matmuls, and of activation-activation matmuls


def _layer_parts(tokens: int, width: int, mlp: int, kv_tokens: int | None = None) -> Stage:
    kv = tokens if kv_tokens is None else kv_tokens
    weights = (
        2 * tokens * width * width * 2  # q and out projections
        + 2 * kv * width * width * 2  # k and v projections
        + 2 * tokens * width * mlp * 2  # MLP in and out
    )
    return weights, 2 * tokens * kv * width * 2  # q @ k^T and attention @ v


def _layer(tokens: int, width: int, mlp: int, kv_tokens: int | None = None) -> int:
    return sum(_layer_parts(tokens, width, mlp, kv_tokens))


def _encoder(depth: int, tokens: int, width: int, mlp: int, *, pruned: bool) -> list[Stage]:
    """`depth` layers; `pruned`: the last computes only the pooled token (`Encoder(keep=)`)."""
    layers = [_layer_parts(tokens, width, mlp) for _ in range(depth)]
    if pruned:
        layers[-1] = _layer_parts(1, width, mlp, kv_tokens=tokens)
    return layers


def image_stages(model_cfg, *, train: bool = False, executed: bool = True) -> list[Stage]:
    """(weight, activation) FLOPs of one image through each stage of the image tower, in
    order: patch embedding, each layer, pooling head, projection. In training, patch dropout
    leaves fewer tokens after the patch embedding. `executed=False` counts the last layer over
    every token, as published FLOP counts (open_clip's) do; vlx computes only the pooled token
    there."""
    from vlx.models import vit

    cfg = model_cfg.image
    size = variants.resolve(cfg, where="model.image")
    patches = (cfg.image_size // size.patch_size) ** 2
    kept = vit.kept_patches(patches, cfg.patch_dropout) if train else patches
    tokens = kept + (1 if cfg.class_token else 0)
    d, m = size.width, size.mlp_dim
    pruned = cfg.pool in vit.POOLS_ONE_TOKEN and executed
    return [
        (2 * patches * (size.patch_size**2 * 3) * d, 0),
        *_encoder(size.depth, tokens, d, m, pruned=pruned),
        _layer_parts(1, d, m, kv_tokens=tokens) if cfg.pool == "map" else (0, 0),
        (2 * d * model_cfg.embed_dim if cfg.proj else 0, 0),
    ]


def text_stages(model_cfg, *, executed: bool = True) -> list[Stage]:
    """As `image_stages`, for one caption: token embedding (no matmul), each layer, final
    norm (none), projection."""
    from vlx.models import text

    cfg = model_cfg.text
    size = variants.resolve(cfg, where="model.text")
    pruned = cfg.pool in text.POOLS_ONE_TOKEN and executed
    return [
        (0, 0),
        *_encoder(size.depth, cfg.context_length, size.width, size.mlp_dim, pruned=pruned),
        (0, 0),
        (2 * size.width * model_cfg.embed_dim if cfg.proj else 0, 0),
    ]


def image_forward(model_cfg, *, train: bool = False, executed: bool = True) -> int:
    """FLOPs of one image through the image tower (with projection); see `image_stages`."""
    return sum(map(sum, image_stages(model_cfg, train=train, executed=executed)))


def text_forward(model_cfg, *, executed: bool = True) -> int:
    """FLOPs of one caption through the text tower (with projection); see `text_stages`."""
    return sum(map(sum, text_stages(model_cfg, executed=executed)))


def stage_of(name: str, depth: int) -> int:
    """The stage (index into `image_stages`/`text_stages`) of a parameter, by its per-layer
    name within its tower (`encoder.blocks.3.mlp.fc1.kernel`)."""
    parts = name.split(".")
    if parts[:2] == ["encoder", "blocks"]:
        return 1 + int(parts[2])
    if parts[0] == "proj":
        return depth + 2
    if parts[0] in ("map_head", "ln_post", "ln_final"):
        return depth + 1
    return 0


def _trained_cost(stages: list[Stage], trained: list[bool]) -> int:
    """A trained stage costs forward + input gradients + weight gradients (3x); a frozen stage
    behind a trained one, forward + input gradients (2x its weight matmuls, 3x the attention
    matmuls, whose operands both need gradients); a frozen stage with nothing trained before
    it, forward only (no gradient reaches it)."""
    total, upstream = 0, False
    for (w, a), t in zip(stages, trained, strict=True):
        total += 3 * (w + a) if t else (2 * w + 3 * a if upstream else w + a)
        upstream = upstream or t
    return total


def train_step(
    model_cfg, batch_size: int, trained: Collection[str] | None = None
) -> dict[str, int]:
    """FLOPs of one training step at global `batch_size`: towers and the B x B logits, x3.
    `trained`: the per-layer names of the trained parameters (`image.encoder.blocks.3.mlp.
    fc1.kernel`), where `optim.freeze` leaves some out; each stage of a tower then counts as
    `_trained_cost` says. A stage counts as trained when any of its parameters is."""
    towers = {"image": image_stages(model_cfg, train=True), "text": text_stages(model_cfg)}
    out = {}
    for tower, stages in towers.items():
        flags = [trained is None] * len(stages)
        for name in trained or ():
            head, _, rest = name.partition(".")
            if head == tower:
                flags[stage_of(rest, len(stages) - 3)] = True
        out[tower] = batch_size * _trained_cost(stages, flags)
    towers_trained = trained is None or any(n.partition(".")[0] in towers for n in trained)
    out["loss"] = (3 if towers_trained else 1) * 2 * batch_size * batch_size * model_cfg.embed_dim
    out["total"] = out["image"] + out["text"] + out["loss"]
    return out


# Dense peak FLOP/s per device (bfloat16; float32 where marked) from vendors' data sheets,
# keyed by a part of `device_kind` (CUDA's device name on GPUs: "NVIDIA H100 80GB HBM3").
PEAKS: dict[str, dict[str, float]] = {
    "h100": {"bfloat16": 989e12, "float32": 67e12},  # SXM; tf32 tensor cores: 494e12
    "h100 pcie": {"bfloat16": 756e12, "float32": 51e12},
    "h100 nvl": {"bfloat16": 835e12, "float32": 60e12},
    "gh200": {"bfloat16": 989e12, "float32": 67e12},
    "h200": {"bfloat16": 989e12, "float32": 67e12},
    "h200 nvl": {"bfloat16": 835e12, "float32": 60e12},
    "l40s": {"bfloat16": 362e12, "float32": 91.6e12},
    "l40": {"bfloat16": 181e12, "float32": 90.5e12},
    "l4": {"bfloat16": 121e12, "float32": 30.3e12},
    "a100": {"bfloat16": 312e12, "float32": 19.5e12},
    "tpu v4": {"bfloat16": 275e12, "float32": 275e12 / 2},
    "tpu v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 2},  # v5e
    "tpu v5e": {"bfloat16": 197e12, "float32": 197e12 / 2},
    "tpu v5p": {"bfloat16": 459e12, "float32": 459e12 / 2},
    "tpu v5": {"bfloat16": 459e12, "float32": 459e12 / 2},  # v5p reports "TPU v5"
    "tpu v6 lite": {"bfloat16": 918e12, "float32": 918e12 / 2},  # v6e (Trillium)
    "tpu v6e": {"bfloat16": 918e12, "float32": 918e12 / 2},
}


def utilization(step_flops: float, step_s: float, devices: int, peak: float | None) -> dict:
    """Achieved TFLOP/s per device of a step of `step_flops` that took `step_s` seconds on
    `devices` devices, and MFU where the device's `peak` FLOP/s is known."""
    achieved = step_flops / step_s / devices
    out = {"tflops_per_device": achieved / 1e12}
    if peak:
        out["mfu"] = achieved / peak
    return out


def device_peak(device_kind: str, dtype: str) -> float | None:
    """The peak of a device by its `device_kind`: the longest name in `PEAKS` found in it as
    whole words ("l4" is not in "NVIDIA L40S"), or None."""
    kind = device_kind.lower()
    for name in sorted(PEAKS, key=len, reverse=True):
        if re.search(rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])", kind):
            return PEAKS[name][dtype]
    return None
