"""open_clip directories: `open_clip_config.json` + `open_clip_model.safetensors` + tokenizer.

`open_clip.create_model_and_transforms('local-dir:OUT')` builds open_clip's own `CLIP` (its
native ViT and text transformer) and `open_clip.get_tokenizer('local-dir:OUT')` the tokenizer.
Its ViT always has a class token, a bias-free patch embedding and a bias-free image projection,
and pools the class token or the patch average; MAP pooling (SigLIP) is refused here: export
those models with `--format hf`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlx.data.transforms import NORMALIZATION
from vlx.errors import ExportError
from vlx.export import layout
from vlx.models import variants

POOL_IMAGE = {"tok": "tok", "gap": "avg"}
POOL_TEXT = {"eos": "eos", "last": "last", "first": "first"}
INTERPOLATION = ("bicubic", "bilinear")

BLOCK_NAMES = dict(
    ln1="ln_1", ln2="ln_2", attn="attn", out="out_proj", fc1="mlp.c_fc", fc2="mlp.c_proj"
)


def check(model_cfg, tokenizer=None) -> None:
    """Raises ExportError naming every option open_clip's native CLIP cannot hold."""
    image, text = model_cfg.image, model_cfg.text
    problems = []
    if not image.class_token:
        problems.append("model.image.class_token=False (its ViT always has a class token)")
    if image.pool not in POOL_IMAGE:
        problems.append(f"model.image.pool={image.pool!r} (it pools 'tok' or 'gap')")
    if image.patch_bias:
        problems.append("model.image.patch_bias=True (its patch embedding has no bias)")
    if image.posemb != "learn":
        problems.append(f"model.image.posemb={image.posemb!r} (use 'learn')")
    if not image.proj or image.proj_bias:
        problems.append("model.image.proj/proj_bias (it projects images without a bias)")
    if not text.causal:
        problems.append("model.text.causal=False (its bidirectional text tower masks padding)")
    if text.pool not in POOL_TEXT:
        problems.append(f"model.text.pool={text.pool!r}")
    if not text.proj:
        problems.append("model.text.proj=False")
    acts = {image.act, text.act}
    if "quick_gelu" in acts and len(acts) > 1:
        problems.append("quick_gelu in one tower only (open_clip sets it for both)")
    for tower in ("image", "text"):
        size = variants.resolve(model_cfg[tower], where=f"model.{tower}")
        if int(size.width * (size.mlp_dim / size.width)) != size.mlp_dim:
            problems.append(f"model.{tower}.mlp_dim={size.mlp_dim} (not width x a ratio)")
    if problems:
        raise ExportError("--format open_clip cannot represent: " + "; ".join(problems))


def rows(model_cfg) -> list[layout.Row]:
    image = variants.resolve(model_cfg.image, where="model.image")
    text = variants.resolve(model_cfg.text, where="model.text")
    names = BLOCK_NAMES

    def ln(t, v):
        return [(f"{t}.weight", (f"{v}.scale",), "copy"), (f"{t}.bias", (f"{v}.bias",), "copy")]

    r: list[layout.Row] = [
        ("visual.conv1.weight", ("image.patch.kernel",), "conv"),
        ("visual.class_embedding", ("image.cls",), "copy"),
        ("visual.positional_embedding", ("image.posemb",), "copy"),
    ]
    if model_cfg.image.pre_norm:
        r += ln("visual.ln_pre", "image.ln_pre")
    for i in range(image.depth):
        r += layout.block_rows(
            f"visual.transformer.resblocks.{i}", f"image.encoder.blocks.{i}", names, fused=True
        )
    r += ln("visual.ln_post", "image.ln_post")
    r.append(("visual.proj", ("image.proj.kernel",), "copy"))
    r.append(("token_embedding.weight", ("text.embed.embedding",), "copy"))
    r.append(("positional_embedding", ("text.posemb",), "copy"))
    for i in range(text.depth):
        r += layout.block_rows(
            f"transformer.resblocks.{i}", f"text.encoder.blocks.{i}", names, fused=True
        )
    r += ln("ln_final", "text.ln_final")
    if model_cfg.text.proj_bias:
        r.append(("text_projection.weight", ("text.proj.kernel",), "linear"))
        r.append(("text_projection.bias", ("text.proj.bias",), "copy"))
    else:
        r.append(("text_projection", ("text.proj.kernel",), "copy"))
    r.append(("logit_scale", ("logit_scale",), "copy"))
    if model_cfg.logit_bias_init is not None:
        r.append(("logit_bias", ("logit_bias",), "copy"))
    return r


def _tower_extras(tower_cfg) -> dict:
    out = {"norm_kwargs": {"eps": tower_cfg.ln_eps}}
    if tower_cfg.act == "gelu_tanh":
        out["act_kwargs"] = {"approximate": "tanh"}
    return out


def model_config(cfg, *, eos_id: int, pad_id: int) -> dict:
    """open_clip_config.json: the model and its preprocessing."""
    m = cfg.model
    image = variants.resolve(m.image, where="model.image")
    text = variants.resolve(m.text, where="model.text")
    model_cfg = {
        "embed_dim": m.embed_dim,
        "quick_gelu": m.image.act == "quick_gelu",
        "vision_cfg": {
            "image_size": m.image.image_size,
            "layers": image.depth,
            "width": image.width,
            "head_width": image.width // image.heads,
            "mlp_ratio": image.mlp_dim / image.width,
            "patch_size": image.patch_size,
            "no_ln_pre": not m.image.pre_norm,
            "pool_type": POOL_IMAGE[m.image.pool],
            **_tower_extras(m.image),
        },
        "text_cfg": {
            "context_length": m.text.context_length,
            "vocab_size": m.text.vocab_size,
            "width": text.width,
            "heads": text.heads,
            "layers": text.depth,
            "mlp_ratio": text.mlp_dim / text.width,
            "pool_type": POOL_TEXT[m.text.pool],
            "eos_id": eos_id,
            "pad_id": pad_id,
            "proj_bias": m.text.proj_bias,
            # Any non-empty name makes open_clip use an HF tokenizer, and for local-dir:OUT it
            # reads the one in OUT.
            "hf_tokenizer_name": "./",
            **_tower_extras(m.text),
        },
    }
    if m.logit_bias_init is not None:
        model_cfg["init_logit_bias"] = m.logit_bias_init
    if cfg.data.interpolation not in INTERPOLATION:
        raise ExportError(
            f"--format open_clip: data.interpolation={cfg.data.interpolation!r}; open_clip "
            f"resizes with {' or '.join(INTERPOLATION)}"
        )
    mean, std = NORMALIZATION[cfg.data.normalize]
    preprocess = {
        "size": m.image.image_size,
        "mode": "RGB",
        "mean": list(mean),
        "std": list(std),
        "interpolation": cfg.data.interpolation,
        "resize_mode": "shortest",
    }
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}


def write(out: Path, cfg, flat: dict[str, np.ndarray], tokenizer) -> None:
    from safetensors.numpy import save_file

    check(cfg.model)
    config = model_config(cfg, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file(layout.to_torch(rows(cfg.model), flat), str(out / "open_clip_model.safetensors"))
    tokenizer.hf.model_max_length = cfg.model.text.context_length
    tokenizer.save(out)
