"""`init_from=hf:PATH` and `init_from=open_clip:PATH`: start training from PyTorch weights.

`hf:PATH` reads a transformers CLIPModel/SiglipModel directory, `open_clip:PATH` an open_clip
directory (`open_clip_config.json` + weights). A `#image` or `#text` suffix takes one tower only
(LiT-style: a pretrained image tower, a new text tower), also after a vlx workdir or checkpoint.
The imported towers' model config is derived from the checkpoint's own config, so the recipe
need not repeat it; importing the text tower also switches `data.tokenizer` to the checkpoint's
tokenizer. Weights are read only from `.safetensors` or with `torch.load(weights_only=True)`:
nothing is ever unpickled.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from flax import nnx

from vlx import checkpoint
from vlx.errors import ExportError
from vlx.export import hf, layout, open_clip, params

log = logging.getLogger(__name__)

PREFIXES = ("hf:", "open_clip:")
TOWERS = ("image", "text")


def is_pytorch(init_from: str) -> bool:
    return init_from.startswith(PREFIXES)


def split_tower(init_from: str) -> tuple[str, tuple[str, ...]]:
    """'SOURCE#image' -> ('SOURCE', ('image',)); without a suffix, both towers."""
    source, _, tower = init_from.partition("#")
    if tower and tower not in TOWERS:
        raise ExportError(f"init_from={init_from!r}: the suffix must be #image or #text")
    return source, (tower,) if tower else TOWERS


def derives_config(init_from: str) -> bool:
    """Whether `init_from` sets the config of the towers it brings: PyTorch weights, or one
    tower of a vlx checkpoint (a whole vlx model must match the run's config instead)."""
    return is_pytorch(init_from) or split_tower(init_from)[1] != TOWERS


def parse(init_from: str) -> tuple[str, Path, tuple[str, ...]]:
    """'hf:PATH#image' -> ('hf', PATH, ('image',))."""
    source, towers = split_tower(init_from)
    fmt, _, path = source.partition(":")
    if not Path(path).is_dir():
        raise ExportError(f"init_from={init_from!r}: {path} is not a directory")
    return fmt, Path(path), towers


def derive_config(cfg, resumed: tuple[checkpoint.Checkpointer, int] | None = None) -> None:
    """Sets the imported towers' model config (and, with the text tower, the tokenizer) from
    the checkpoint's own config. `resumed`: the latest checkpoint of a run that resumes, whose
    config was derived so when it started; it is taken from there, and the source need no
    longer exist."""
    source, towers = split_tower(cfg.init_from)
    if resumed is not None:
        ckpt, step = resumed
        workdir = ckpt.directory.parent
        derived, tokenizer = _saved_towers(ckpt.saved_config(step), workdir / "tokenizer")
        where = f"{workdir}, which started from {source}"
    elif is_pytorch(cfg.init_from):
        fmt, path, towers = parse(cfg.init_from)
        derived = _hf_config(path) if fmt == "hf" else _open_clip_config(path)
        tokenizer = _pytorch_tokenizer(cfg.init_from, path) if "text" in towers else None
        where = path
    else:
        ckpt, step = checkpoint.find(source)
        copy = ckpt.directory.parent / "tokenizer"
        derived, tokenizer = _saved_towers(ckpt.saved_config(step), copy)
        where = source
    with cfg.unlocked():
        for tower in towers:
            cfg.model[tower].update(derived[tower])
        cfg.model.embed_dim = derived["embed_dim"]
        if towers == TOWERS:
            cfg.model.logit_bias_init = derived["logit_bias_init"]
        if "text" in towers:
            cfg.data.tokenizer = tokenizer
    log.info("model config of %s taken from %s", "+".join(towers), where)


def _pytorch_tokenizer(init_from: str, path: Path) -> str:
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.json").is_file():
        raise ExportError(
            f"init_from={init_from!r}: no Hugging Face tokenizer files in {path}; "
            "the text tower needs its tokenizer there"
        )
    return str(path)


def _saved_towers(saved, tokenizer_copy: Path) -> tuple[dict, str]:
    """The towers' config saved with a vlx checkpoint, without the settings a run may change
    (such as patch dropout), and its tokenizer: `tokenizer_copy`, the copy a run keeps in its
    workdir, if it exists."""

    def tower(name: str) -> dict:
        keys = checkpoint.RUNTIME_MODEL_KEYS
        return {k: v for k, v in saved.model[name].items() if f"model.{name}.{k}" not in keys}

    derived = dict(
        image=tower("image"),
        text=tower("text"),
        embed_dim=saved.model.embed_dim,
        logit_bias_init=saved.model.logit_bias_init,
    )
    return derived, str(tokenizer_copy) if tokenizer_copy.is_dir() else saved.data.tokenizer


def _hf_config(path: Path) -> dict:
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(path))
    if config.model_type not in ("clip", "siglip"):
        raise ExportError(f"{path}: model_type {config.model_type!r}; vlx imports clip and siglip")
    kind = config.model_type
    fixed = {"image": {}, "text": {}}
    for key, want, _ in hf.REQUIRED[kind]:
        head, _, field = key.partition(".")
        if head in fixed:
            fixed[head][field] = want
    v, t = config.vision_config, config.text_config
    image = dict(
        variant="B",
        width=v.hidden_size,
        depth=v.num_hidden_layers,
        mlp_dim=v.intermediate_size,
        heads=v.num_attention_heads,
        patch_size=v.patch_size,
        image_size=v.image_size,
        act=_act(v.hidden_act),
        ln_eps=v.layer_norm_eps,
        **fixed["image"],
    )
    text = dict(
        variant="B",
        width=t.hidden_size,
        depth=t.num_hidden_layers,
        mlp_dim=t.intermediate_size,
        heads=t.num_attention_heads,
        vocab_size=t.vocab_size,
        context_length=t.max_position_embeddings,
        act=_act(t.hidden_act),
        ln_eps=t.layer_norm_eps,
        **fixed["text"],
    )
    if kind == "clip":
        embed_dim, bias = config.projection_dim, None
    else:
        embed_dim, bias = getattr(t, "projection_size", None) or t.hidden_size, -10.0
    return dict(image=image, text=text, embed_dim=embed_dim, logit_bias_init=bias)


def _act(name: str) -> str:
    if name not in hf.ACT_BACK:
        raise ExportError(f"activation {name!r} has no vlx equivalent")
    return hf.ACT_BACK[name]


def _open_clip_config(path: Path) -> dict:
    file = path / "open_clip_config.json"
    if not file.is_file():
        raise ExportError(f"{path} has no open_clip_config.json")
    m = json.loads(file.read_text())["model_cfg"]
    v, t = m.get("vision_cfg", {}), m.get("text_cfg", {})
    unsupported = [k for k in ("timm_model_name", "attentional_pool", "ls_init_value") if v.get(k)]
    unsupported += [
        f"text_cfg.{k}" for k in ("hf_model_name", "ls_init_value", "embed_cls") if t.get(k)
    ]
    if unsupported:
        raise ExportError(
            f"{file}: vlx cannot import open_clip models with {', '.join(unsupported)}"
        )

    def act(cfg_part):
        if m.get("quick_gelu"):
            return "quick_gelu"
        return (
            "gelu_tanh"
            if (cfg_part.get("act_kwargs") or {}).get("approximate") == "tanh"
            else "gelu"
        )

    width, text_width = v.get("width", 768), t.get("width", 512)
    pool = {"argmax": "eos", "eos": "eos", "last": "last", "first": "first"}
    image = dict(
        variant="B",
        width=width,
        depth=v.get("layers", 12),
        mlp_dim=int(width * v.get("mlp_ratio", 4.0)),
        heads=width // v.get("head_width", 64),
        patch_size=v.get("patch_size", 16),
        image_size=v.get("image_size", 224),
        act=act(v),
        ln_eps=(v.get("norm_kwargs") or {}).get("eps", 1e-5),
        class_token=True,
        pool={"tok": "tok", "avg": "gap"}[v.get("pool_type", "tok")],
        pre_norm=not v.get("no_ln_pre", False),
        patch_bias=False,
        posemb="learn",
        proj=True,
        proj_bias=False,
    )
    text = dict(
        variant="B",
        width=text_width,
        depth=t.get("layers", 12),
        mlp_dim=int(text_width * t.get("mlp_ratio", 4.0)),
        heads=t.get("heads", 8),
        vocab_size=t.get("vocab_size", 49408),
        context_length=t.get("context_length", 77),
        act=act(t),
        ln_eps=(t.get("norm_kwargs") or {}).get("eps", 1e-5),
        causal=not t.get("no_causal_mask", False),
        pool=pool[t.get("pool_type", "argmax")],
        proj=True,
        proj_bias=t.get("proj_bias", False),
    )
    return dict(
        image=image, text=text, embed_dim=m["embed_dim"], logit_bias_init=m.get("init_logit_bias")
    )


def read_weights(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The first of `names` in `path`: safetensors directly, .bin/.pt with weights_only=True."""
    for name in names:
        file = path / name
        if not file.is_file():
            continue
        if file.suffix == ".safetensors":
            from safetensors.numpy import load_file

            return load_file(str(file))
        try:
            import torch  # the `torch` extra
        except ImportError:
            raise ExportError(
                f"{file} is a PyTorch file and PyTorch is not installed: install the torch "
                "extra (pip install 'vlx[torch]'), or save the weights as .safetensors"
            ) from None
        try:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and plain containers
            raise ExportError(
                f"{file}: not a plain tensor file ({type(e).__name__}); vlx reads only "
                ".safetensors or torch files that load with weights_only=True"
            ) from None
        state = state.get("state_dict", state)
        return {k.removeprefix("module."): v.float().numpy() for k, v in state.items()}
    raise ExportError(f"{path} has none of {', '.join(names)}")


def load(cfg, model_arrays: nnx.State) -> nnx.State:
    """`model_arrays` with the imported towers' weights put in, on the same devices."""
    fmt, path, towers = parse(cfg.init_from)
    if fmt == "hf":
        kind = hf.style(cfg.model, eos_id=-1)  # the tokenizer is the user's concern here
        rows = hf.rows(cfg.model, kind)
        state = read_weights(path, ("model.safetensors", "pytorch_model.bin"))
    else:
        open_clip.check(cfg.model)
        rows = open_clip.rows(cfg.model)
        state = read_weights(
            path,
            (
                "open_clip_model.safetensors",
                "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin",
            ),
        )
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    known = {r[0] for r in rows}
    if towers != TOWERS:  # one tower: its rows only (not the logit scale and bias)
        rows = [r for r in rows if all(k.startswith(f"{towers[0]}.") for k in r[1])]
    missing = [r[0] for r in rows if r[0] not in state]
    if missing:
        raise ExportError(f"{path}: weights missing for {', '.join(missing[:5])}")
    unused = sorted(set(state) - known)
    if unused:
        raise ExportError(f"{path}: weights vlx does not know: {', '.join(unused[:5])}")
    imported = layout.from_torch(rows, state, params.shapes(nnx.to_pure_dict(model_arrays)))
    log.info("initialised %s from %s (%d arrays)", "+".join(towers), path, len(imported))
    return params.put(model_arrays, imported)
