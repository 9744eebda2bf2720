"""Hugging Face transformers directories: `CLIPModel` and `SiglipModel`.

CLIP style: class token, pre-LN, `tok` pooling, image and text projections without bias, a
causal text tower pooled at the first end-of-text token, no logit bias. SigLIP style: no class
token, no pre-LN, patch bias, MAP pooling, no image projection, a bidirectional text tower pooled
at the last token and projected with a bias, a logit bias. Anything else is refused naming the
options a format cannot hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlx.data.transforms import INTERPOLATION, NORMALIZATION
from vlx.errors import ExportError
from vlx.export import layout
from vlx.models import variants

ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}
ACT_BACK = {**{v: k for k, v in ACT.items()}, "gelu_new": "gelu_tanh"}

# What each style needs: (vlx key, required value, why).
REQUIRED = {
    "clip": [
        ("image.class_token", True, "CLIPModel's vision tower always has a class token"),
        ("image.pool", "tok", "CLIPModel pools the class token"),
        ("image.pre_norm", True, "CLIPModel always has pre_layrnorm"),
        ("image.patch_bias", False, "CLIPModel's patch embedding has no bias"),
        ("image.posemb", "learn", "CLIPModel has learned position embeddings"),
        ("image.proj", True, "CLIPModel always projects images"),
        ("image.proj_bias", False, "CLIPModel's projections have no bias"),
        ("text.causal", True, "CLIPModel's text tower is causal"),
        ("text.pool", "eos", "CLIPModel pools at the end-of-text token"),
        ("text.proj", True, "CLIPModel always projects text"),
        ("text.proj_bias", False, "CLIPModel's projections have no bias"),
        ("logit_bias_init", None, "CLIPModel has no logit bias (use the SigLIP style)"),
    ],
    "siglip": [
        ("image.class_token", False, "SiglipModel's vision tower has no class token"),
        ("image.pool", "map", "SiglipModel pools with its MAP head"),
        ("image.pre_norm", False, "SiglipModel has no pre-LN"),
        ("image.patch_bias", True, "SiglipModel's patch embedding has a bias"),
        ("image.posemb", "learn", "SiglipModel has learned position embeddings"),
        ("image.proj", False, "SiglipModel has no image projection"),
        ("text.causal", False, "SiglipModel's text tower is bidirectional"),
        ("text.pool", "last", "SiglipModel pools the last token"),
        ("text.proj", True, "SiglipModel projects text with its head"),
        ("text.proj_bias", True, "SiglipModel's text head has a bias"),
    ],
}


def style(model_cfg, eos_id: int) -> str:
    """'clip' or 'siglip' (by pooling); raises ExportError listing what does not fit."""
    kind = "siglip" if model_cfg.image.pool == "map" else "clip"
    problems = []
    if kind == "clip" and eos_id == 2:  # transformers' legacy rule for id 2: pool at argmax(ids)
        problems.append("a tokenizer whose end-of-text id is 2 (CLIPModel pools id 2 at argmax)")
    for key, want, why in REQUIRED[kind]:
        have = model_cfg
        for part in key.split("."):
            have = have[part]
        if have != want:
            problems.append(f"model.{key}={have!r} ({why}; needs {want!r})")
    for tower in ("image", "text"):
        if model_cfg[tower].act not in ACT:
            problems.append(f"model.{tower}.act={model_cfg[tower].act!r}")
    if problems:
        name = "CLIPModel" if kind == "clip" else "SiglipModel"
        raise ExportError(f"--format hf ({name}) cannot represent: " + "; ".join(problems))
    return kind


def check(model_cfg, tokenizer) -> None:
    style(model_cfg, tokenizer.eos_id)


def _block_names() -> dict[str, str]:
    return dict(
        ln1="layer_norm1",
        ln2="layer_norm2",
        attn="self_attn",
        q="q_proj",
        k="k_proj",
        v="v_proj",
        out="out_proj",
        fc1="mlp.fc1",
        fc2="mlp.fc2",
    )


def rows(model_cfg, kind: str) -> list[layout.Row]:
    """The state-dict table of a CLIPModel or SiglipModel with `model_cfg`'s sizes."""
    image = variants.resolve(model_cfg.image, where="model.image")
    text = variants.resolve(model_cfg.text, where="model.text")
    names = _block_names()
    r: list[layout.Row] = []

    def ln(t, v):
        return [(f"{t}.weight", (f"{v}.scale",), "copy"), (f"{t}.bias", (f"{v}.bias",), "copy")]

    vm, tm = "vision_model", "text_model"
    r.append((f"{vm}.embeddings.patch_embedding.weight", ("image.patch.kernel",), "conv"))
    r.append((f"{vm}.embeddings.position_embedding.weight", ("image.posemb",), "copy"))
    for i in range(image.depth):
        r += layout.block_rows(
            f"{vm}.encoder.layers.{i}", f"image.encoder.blocks.{i}", names, fused=False
        )
    r += ln(f"{vm}.post_layernorm", "image.ln_post")
    r.append((f"{tm}.embeddings.token_embedding.weight", ("text.embed.embedding",), "copy"))
    r.append((f"{tm}.embeddings.position_embedding.weight", ("text.posemb",), "copy"))
    for i in range(text.depth):
        r += layout.block_rows(
            f"{tm}.encoder.layers.{i}", f"text.encoder.blocks.{i}", names, fused=False
        )
    r += ln(f"{tm}.final_layer_norm", "text.ln_final")
    if kind == "clip":
        r.append((f"{vm}.embeddings.class_embedding", ("image.cls",), "copy"))
        r += ln(f"{vm}.pre_layrnorm", "image.ln_pre")
        r.append(("visual_projection.weight", ("image.proj.kernel",), "linear"))
        r.append(("text_projection.weight", ("text.proj.kernel",), "linear"))
        r.append(("logit_scale", ("logit_scale",), "copy"))
        return r
    head = f"{vm}.head"
    r.append((f"{vm}.embeddings.patch_embedding.bias", ("image.patch.bias",), "copy"))
    r.append((f"{head}.probe", ("image.map_head.probe",), "copy"))
    r += layout.attention_rows(f"{head}.attention", "image.map_head.attn", names, fused=True)
    r += ln(f"{head}.layernorm", "image.map_head.ln")
    for fc in ("fc1", "fc2"):
        r.append((f"{head}.mlp.{fc}.weight", (f"image.map_head.mlp.{fc}.kernel",), "linear"))
        r.append((f"{head}.mlp.{fc}.bias", (f"image.map_head.mlp.{fc}.bias",), "copy"))
    r.append((f"{tm}.head.weight", ("text.proj.kernel",), "linear"))
    r.append((f"{tm}.head.bias", ("text.proj.bias",), "copy"))
    r.append(("logit_scale", ("logit_scale",), "scalar1"))
    r.append(("logit_bias", ("logit_bias",), "scalar1"))
    return r


def model_config(model_cfg, kind: str, *, eos_id: int, pad_id: int):
    """A transformers CLIPConfig or SiglipConfig for `model_cfg`."""
    import transformers

    image = variants.resolve(model_cfg.image, where="model.image")
    text = variants.resolve(model_cfg.text, where="model.text")
    vision = dict(
        hidden_size=image.width,
        intermediate_size=image.mlp_dim,
        num_hidden_layers=image.depth,
        num_attention_heads=image.heads,
        image_size=model_cfg.image.image_size,
        patch_size=image.patch_size,
        hidden_act=ACT[model_cfg.image.act],
        layer_norm_eps=model_cfg.image.ln_eps,
    )
    txt = dict(
        vocab_size=model_cfg.text.vocab_size,
        hidden_size=text.width,
        intermediate_size=text.mlp_dim,
        num_hidden_layers=text.depth,
        num_attention_heads=text.heads,
        max_position_embeddings=model_cfg.text.context_length,
        hidden_act=ACT[model_cfg.text.act],
        layer_norm_eps=model_cfg.text.ln_eps,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=eos_id,
    )
    if kind == "clip":
        vision["projection_dim"] = txt["projection_dim"] = model_cfg.embed_dim
        return transformers.CLIPConfig(
            text_config=txt,
            vision_config=vision,
            projection_dim=model_cfg.embed_dim,
            logit_scale_init_value=model_cfg.logit_scale_init,
        )
    txt["projection_size"] = model_cfg.embed_dim
    return transformers.SiglipConfig(text_config=txt, vision_config=vision)


def image_processor(cfg):
    """The preprocessing vlx evaluates with: shorter side to the image size (PIL resampling of
    `data.interpolation`), centre crop, /255, normalise."""
    import transformers

    size = cfg.model.image.image_size
    mean, std = NORMALIZATION[cfg.data.normalize]
    # PIL resampling, as vlx's own pipeline (transformers 5's default resizes with torchvision).
    # Only transformers 4 lacks the PIL class; naming CLIPImageProcessor without torchvision
    # makes transformers 5 warn that it falls back to the PIL class.
    processor = getattr(transformers, "CLIPImageProcessorPil", None)
    processor = processor or transformers.CLIPImageProcessor
    return processor(
        do_resize=True,
        size={"shortest_edge": size},
        resample=int(INTERPOLATION[cfg.data.interpolation]),
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
    )


def write(out: Path, cfg, flat: dict[str, np.ndarray], tokenizer) -> None:
    """Writes config.json, model.safetensors, the tokenizer and processor files into `out`."""
    from safetensors.numpy import save_file

    kind = style(cfg.model, tokenizer.eos_id)
    if kind == "siglip" and "logit_bias" not in flat:
        flat = {**flat, "logit_bias": np.zeros((), np.float32)}
    config = model_config(cfg.model, kind, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    config.save_pretrained(str(out))
    save_file(layout.to_torch(rows(cfg.model, kind), flat), str(out / "model.safetensors"))
    tokenizer.hf.model_max_length = cfg.model.text.context_length
    tokenizer.save(out)
    image_processor(cfg).save_pretrained(str(out))
    (out / "processor_config.json").write_text(
        json.dumps({"processor_class": "CLIPProcessor" if kind == "clip" else "SiglipProcessor"})
    )
