"""Config loading: defaults, recipe files, command-line overrides and validation.

A recipe file under `configs/` defines `get_config(arg=None) -> ConfigDict` and sets only what
differs from `defaults()`. Every key it sets, and every `--config.KEY=VALUE` override, must exist
in the defaults; a typo is an error naming the key and the closest valid ones, never a silently
ignored setting. Evaluators (`config.evals.<name>`) are free-form names whose fields are checked
against the defaults of their `type`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_collections

from vlx import compile_options
from vlx.errors import ConfigError
from vlx.models.variants import VARIANTS


def _tower_defaults() -> dict[str, Any]:
    return dict(
        variant="B",
        width=None,  # None: taken from the variant
        depth=None,
        mlp_dim=None,
        heads=None,
        act="gelu",
        ln_eps=1e-5,
        proj=True,
        proj_bias=False,
    )


def defaults() -> ml_collections.ConfigDict:
    """Every key a config may set, with its default value."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256
    c.log_every = 50

    c.mesh = dict(data=-1, fsdp=1, tensor=1)

    c.checkpoint = dict(
        every_steps=1000,  # also at the end, and when stopped by SIGTERM/SIGINT
        keep=3,  # the last N checkpoints
        keep_every=0,  # also keep every checkpoint at a multiple of this step forever (0: none)
        async_save=True,
    )
    c.init_from = ""  # weights only, starting at step 0: a workdir or checkpoint directory, or
    #                   hf:PATH / open_clip:PATH (+ #image or #text for one tower)
    c.skip_nonfinite = False  # skip (and count) updates whose loss is not finite, else stop
    # Gradient accumulation over this many microbatches, GradCache-style: the loss still sees
    # the whole batch's negatives; memory is that of one microbatch through the towers.
    c.microbatches = 1

    image = _tower_defaults()
    image.update(
        variant="B/16",
        patch_size=None,
        image_size=224,
        class_token=True,
        posemb="learn",
        pool="tok",
        pre_norm=True,
        patch_bias=False,
        patch_dropout=0.0,  # FLIP: drop this fraction of patch tokens in training (not in eval)
    )
    text = _tower_defaults()
    text.update(
        variant="M",
        vocab_size=49408,
        context_length=77,
        causal=True,
        pool="eos",
    )
    c.model = dict(
        image=image,
        text=text,
        embed_dim=512,
        logit_scale_init=math.log(1 / 0.07),
        logit_bias_init=None,
        max_logit_scale=math.log(100.0),
        dtype="float32",
        param_dtype="float32",
        scan=True,
        remat="none",
        # auto: cuDNN flash attention on A100/H100-class GPUs in bfloat16, else XLA's (xla)
        attention="auto",
        # The library behind XLA's matmuls on a CPU (vlx/compile_options.py): auto is eigen on
        # x86 CPUs whose widest vector unit is AVX2 for models whose layers are at most 1,536
        # wide (ViT-S and smaller), else XLA's own choice (default).
        cpu_matmul="auto",
    )

    c.loss = dict(type="softmax", impl="gather")

    c.optim = dict(
        lr=5e-4,
        warmup_steps=100,
        end_lr=0.0,
        schedule="cosine",
        b1=0.9,
        b2=0.98,
        eps=1e-6,
        weight_decay=0.2,
        grad_clip=1.0,
        # Parameters never trained: a regular expression over their per-layer names, e.g.
        # "image.*" to lock the image tower (LiT). No gradient, no optimizer state for them.
        freeze="",
        # Learning-rate multipliers: (regular expression, multiplier) pairs over the same
        # names; the first pattern that matches a parameter sets its multiplier (else 1), e.g.
        # (("image.*", 0.1),) fine-tunes a pretrained image tower at a tenth of the rate.
        lr_mults=(),
    )

    c.data = dict(
        source="demo",  # demo | arrayrecord:PATH | tfds:NAME[:SPLIT] | SPEC=W,SPEC=W
        tokenizer="demo",  # demo | a Hugging Face tokenizer directory (or cached name)
        normalize="clip",
        train_crop="random_resized",  # or "center": resize + centre crop, no augmentation
        crop_scale=(0.9, 1.0),
        interpolation="bicubic",
        num_workers=0,  # Grain worker processes; 0 decodes in threads of the main process
        prefetch=2,  # batches transferred to the devices ahead of the step
        max_bad_fraction=0.01,  # stop when more examples than this fail to load
        tfds=dict(data_dir="", image_key="image", text_key="caption", label_key="label"),
        demo=dict(num_examples=1_000_000, holdout=True),
    )

    c.evals = ml_collections.ConfigDict()
    return c


def _eval_defaults(kind: str, **extra) -> dict[str, Any]:
    """The settings every evaluator has, and those of its kind."""
    return dict(
        type=kind,
        dataset="demo",
        split="test",
        num_examples=0,  # the first N examples; 0: all (the demo's test split has 1,000)
        batch_size=256,
        every_steps=0,  # 0: only at the end of training
        prefix="",  # metric names: PREFIX/top1; empty: the evaluator's name
        **extra,
    )


EVAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "zeroshot": _eval_defaults(
        "zeroshot",
        templates="demo",  # a built-in set (clip_imagenet, clip_imagenet_short, simple, demo)
        #                    or a tuple of templates such as ("a photo of a {}.",)
        classnames="",  # "": the dataset's own; "imagenet": CLIP's names; or a tuple of names
        prompt_weighting="none",  # or "zpe": label-free weights per template
        zpe_temperature=1.0,
        zpe_reference="",  # dataset whose train images centre the logits; "": the eval images
        zpe_reference_examples=10000,
    ),
    "retrieval": _eval_defaults("retrieval"),
    "linear_probe": _eval_defaults(
        "linear_probe",
        train_split="train",
        train_dataset="",  # "": the same dataset as `dataset`
        train_examples=0,  # 0: all
        method="logistic",  # or "ridge"
        l2=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0),  # several: chosen on held-out train rows
        val_fraction=0.2,
    ),
}

EVAL_CHOICES: dict[str, tuple[str, ...]] = {
    "prompt_weighting": ("none", "zpe"),
    "method": ("logistic", "ridge"),
}

# Settings that take either a name or a tuple.
_NAME_OR_TUPLE = ("templates", "classnames")

CHOICES: dict[str, tuple[Any, ...]] = {
    "model.image.pool": ("tok", "gap", "map"),
    "model.image.posemb": ("learn", "sincos2d"),
    "model.image.act": ("gelu", "gelu_tanh", "quick_gelu"),
    "model.text.act": ("gelu", "gelu_tanh", "quick_gelu"),
    "model.text.pool": ("eos", "last", "first", "mean"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots"),
    "model.attention": ("auto", "xla", "cudnn"),
    "model.cpu_matmul": compile_options.CPU_MATMULS,
    "loss.type": ("softmax", "sigmoid"),
    "loss.impl": ("gather", "ring"),
    "optim.schedule": ("cosine", "constant"),
    "data.normalize": ("clip", "minus_one_to_one"),
    "data.train_crop": ("random_resized", "center"),
    "data.interpolation": ("bicubic", "bilinear", "nearest", "lanczos"),
}


def load(path: str | Path, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path` (optionally `path:arg`), applies `--config.KEY=VALUE` overrides, validates."""
    path, sep, arg = str(path).partition(".py:")
    path, arg = (path + ".py", arg) if sep else (path, None)
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"vlx_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(); a vlx config returns a ConfigDict")
    try:
        user = module.get_config(arg) if arg is not None else module.get_config()
    except ValueError as e:  # a recipe refusing its argument
        raise ConfigError(f"{path}: {e}") from e
    cfg = defaults()
    merge(cfg, user, where=path)
    for item in overrides:
        apply_override(cfg, item)
    validate(cfg)
    return cfg


def from_dict(values: dict[str, Any] | ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Defaults updated with `values` and validated (for tests and programmatic use)."""
    cfg = defaults()
    merge(cfg, values, where="dict")
    validate(cfg)
    return cfg


def merge(base: ml_collections.ConfigDict, user: Any, *, where: str, prefix: str = "") -> None:
    """Recursively writes `user` into `base`, refusing keys that `base` does not have."""
    for key, value in dict(user).items():
        name = f"{prefix}{key}"
        if name == "evals":
            _merge_evals(base, value, where=where)
            continue
        if key not in base:
            raise ConfigError(_unknown_key_message(name, base, prefix, where))
        current = base[key]
        if isinstance(current, ml_collections.ConfigDict):
            if not isinstance(value, dict | ml_collections.ConfigDict):
                raise ConfigError(f"{where}: {name} must be a dict of settings, got {value!r}")
            merge(current, value, where=where, prefix=f"{name}.")
        else:
            _set(base, key, value, name)


def _merge_evals(base: ml_collections.ConfigDict, evals: Any, *, where: str) -> None:
    for name, spec in dict(evals).items():
        spec = dict(spec)
        kind = spec.get("type")
        if kind not in EVAL_DEFAULTS:
            raise ConfigError(
                f"{where}: evals.{name}.type={kind!r} is not an evaluator; "
                f"choose one of {', '.join(EVAL_DEFAULTS)}"
            )
        if name not in base.evals:
            base.evals[name] = ml_collections.ConfigDict(EVAL_DEFAULTS[kind])
        merge(base.evals[name], spec, where=where, prefix=f"evals.{name}.")


def _set(node: ml_collections.ConfigDict, key: str, value: Any, name: str) -> None:
    current = node[key]
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, list) and (isinstance(current, tuple) or key in _NAME_OR_TUPLE):
        value = tuple(value)  # lists come back from JSON and the command line
    either = key in _NAME_OR_TUPLE and isinstance(value, str | tuple)
    if (
        not either
        and current is not None
        and value is not None
        and type(current) is not type(value)
    ):
        raise ConfigError(
            f"{name}={value!r} has type {type(value).__name__}, "
            f"expected {type(current).__name__} (default {current!r})"
        )
    with node.unlocked():
        if either and type(current) is not type(value):
            del node[key]  # ConfigDict keeps a field's first type otherwise
        node[key] = value


def _all_keys(node: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, ml_collections.ConfigDict):
            keys += _all_keys(value, f"{prefix}{key}.")
    return keys


def _unknown_key_message(name: str, node: ml_collections.ConfigDict, prefix: str, where: str):
    candidates = [f"{prefix}{k}" for k in _all_keys(node)]
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"{where}: unknown config key {name}{hint}"


def apply_override(cfg: ml_collections.ConfigDict, item: str) -> None:
    """Applies one `config.KEY=VALUE` (or `--config.KEY=VALUE`) override."""
    text = item.removeprefix("--").removeprefix("config.")
    if "=" not in text:
        raise ConfigError(f"override {item!r} must look like --config.KEY=VALUE")
    name, raw = text.split("=", 1)
    if name == "evals":  # replace the evaluators, e.g. --config.evals={} runs none
        evals = _parse_value(raw, {})
        if not isinstance(evals, dict):
            raise ConfigError("--config.evals takes a dict of evaluators, e.g. {} for none")
        with cfg.unlocked():
            cfg.evals = ml_collections.ConfigDict()
        _merge_evals(cfg, evals, where="override")
        return
    parts = name.split(".")
    if parts[0] == "evals" and len(parts) == 2:  # add or update one: --config.evals.NAME={...}
        spec = _parse_value(raw, {})
        if not isinstance(spec, dict):
            raise ConfigError(f"--config.{name} takes a dict, e.g. {{'type': 'zeroshot'}}")
        if parts[1] in cfg.evals:
            spec = {**cfg.evals[parts[1]].to_dict(), **spec}
        _merge_evals(cfg, {parts[1]: spec}, where="override")
        return
    node = cfg
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(_unknown_key_message(name, cfg, "", "override"))
        node = node[part]
    key = parts[-1]
    if key not in node:
        raise ConfigError(_unknown_key_message(name, cfg, "", "override"))
    current = node[key]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"override {name} names a group of settings; set one of its keys")
    if key in _NAME_OR_TUPLE:  # a tuple of strings, or else a name
        current = () if raw.lstrip()[:1] in ("(", "[") else ""
    _set(node, key, _parse_value(raw, current), name)


def _parse_value(raw: str, current: Any) -> Any:
    if isinstance(current, str):
        return raw
    if isinstance(current, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{raw!r} is not a boolean; use true or false")
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if current is None:
            return raw
        raise ConfigError(f"cannot read {raw!r} as {type(current).__name__}") from None


def get(cfg: ml_collections.ConfigDict, name: str) -> Any:
    node = cfg
    for part in name.split("."):
        node = node[part]
    return node


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks values that every part of vlx relies on; raises ConfigError naming the key."""
    for name, allowed in CHOICES.items():
        value = get(cfg, name)
        if value not in allowed:
            raise ConfigError(
                f"{name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}"
            )
    for name in ("total_steps", "batch_size", "log_every", "model.embed_dim", "microbatches"):
        if get(cfg, name) <= 0:
            raise ConfigError(f"{name}={get(cfg, name)} must be positive")
    for axis, size in cfg.mesh.items():
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise ConfigError(f"mesh.{axis}={size!r} must be a positive integer or -1 (fill)")
    if list(cfg.mesh.values()).count(-1) > 1:
        raise ConfigError("mesh: at most one axis may be -1 (fill the remaining devices)")
    for tower in ("image", "text"):
        variant = cfg.model[tower].variant
        if variant.split("/")[0] not in VARIANTS:
            raise ConfigError(
                f"model.{tower}.variant={variant!r}: size must be one of {', '.join(VARIANTS)}"
            )
    if cfg.model.image.pool == "tok" and not cfg.model.image.class_token:
        raise ConfigError("model.image.pool='tok' needs model.image.class_token=True")
    if not 0.0 <= cfg.model.image.patch_dropout < 1.0:
        raise ConfigError(
            f"model.image.patch_dropout={cfg.model.image.patch_dropout} must be in [0, 1)"
        )
    if cfg.model.attention == "cudnn" and cfg.model.dtype != "bfloat16":
        raise ConfigError(
            "model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN flash attention "
            "has no float32 kernels)"
        )
    if cfg.batch_size % cfg.microbatches:
        raise ConfigError(
            f"microbatches={cfg.microbatches} does not divide batch_size={cfg.batch_size}"
        )
    try:
        re.compile(cfg.optim.freeze)
    except re.error as e:
        raise ConfigError(
            f"optim.freeze={cfg.optim.freeze!r} is not a regular expression: {e}"
        ) from e
    _validate_lr_mults(cfg.optim.lr_mults)
    if cfg.loss.impl == "ring" and cfg.loss.type != "sigmoid":
        raise ConfigError("loss.impl='ring' exists for loss.type='sigmoid' only")
    for name, e in cfg.evals.items():
        _validate_eval(f"evals.{name}", e)


def _validate_lr_mults(rules) -> None:
    for rule in rules:
        fix = "give (regular expression, multiplier) pairs, e.g. (('image.*', 0.1),)"
        if not (isinstance(rule, tuple | list) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ConfigError(f"optim.lr_mults: {rule!r} is not a pair; {fix}")
        pattern, mult = rule
        if isinstance(mult, bool) or not isinstance(mult, int | float) or mult < 0:
            raise ConfigError(f"optim.lr_mults: {rule!r}: the multiplier must be a number >= 0")
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(
                f"optim.lr_mults: {pattern!r} is not a regular expression: {e}"
            ) from e


def _validate_eval(key: str, e: ml_collections.ConfigDict) -> None:
    from vlx.evals import prompts  # the template sets and class lists live with the evaluators

    for field, allowed in EVAL_CHOICES.items():
        if field in e and e[field] not in allowed:
            raise ConfigError(
                f"{key}.{field}={e[field]!r} is not allowed; choose one of {', '.join(allowed)}"
            )
    for field in ("num_examples", "train_examples", "every_steps"):
        if field in e and e[field] < 0:
            raise ConfigError(f"{key}.{field}={e[field]} must be >= 0")
    if e.batch_size <= 0:
        raise ConfigError(f"{key}.batch_size={e.batch_size} must be positive")
    if "templates" in e:
        prompts.templates(e.templates, key=f"{key}.templates")
        prompts.check_classnames(e.classnames, key=f"{key}.classnames")
        if e.zpe_temperature <= 0:
            raise ConfigError(f"{key}.zpe_temperature must be positive")
    if "l2" in e:
        if not e.l2 or any(not isinstance(v, int | float) or v < 0 for v in e.l2):
            raise ConfigError(f"{key}.l2={e.l2!r} must list one or more values >= 0")
        if not 0 < e.val_fraction < 1:
            raise ConfigError(f"{key}.val_fraction={e.val_fraction} must be between 0 and 1")
