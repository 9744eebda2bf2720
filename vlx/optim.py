"""AdamW with global-norm clipping, warmup + cosine (or constant) schedule, kernel-only decay,
per-parameter learning-rate multipliers (`optim.lr_mults`), and the parameters it leaves alone
(`optim.freeze`)."""

from __future__ import annotations

import logging
import math
import re

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vlx.errors import ConfigError
from vlx.export.params import layer_keys

log = logging.getLogger(__name__)


def schedule(optim_cfg, total_steps: int) -> optax.Schedule:
    warmup = min(optim_cfg.warmup_steps, total_steps)
    if optim_cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=optim_cfg.lr,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=optim_cfg.end_lr,
        )
    return optax.join_schedules(
        [optax.linear_schedule(0.0, optim_cfg.lr, warmup), optax.constant_schedule(optim_cfg.lr)],
        [warmup],
    )


def decay_mask(params):
    """True for matmul kernels (dense, attention, patch conv); gains, biases, embeddings,
    position embeddings and the logit scale/bias are not decayed."""

    def is_kernel(path, _) -> bool:
        return _dotted(path).split(".")[-1] == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make(optim_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    lr = schedule(optim_cfg, total_steps)
    adamw = optax.adamw(
        lr,
        b1=optim_cfg.b1,
        b2=optim_cfg.b2,
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
        mask=decay_mask,
    )
    clip = optim_cfg.grad_clip
    # The same chain whatever the settings (the stateless steps become identities), so the
    # optimizer state, and a checkpoint of it, keeps its layout when a resumed run turns
    # clipping or learning-rate multipliers on or off.
    tx = optax.chain(
        optax.clip_by_global_norm(clip) if clip else optax.identity(),
        adamw,
        scale_by_lr_mults(optim_cfg.lr_mults),
    )
    return tx, lr


def lr_mult(rules, name: str) -> float:
    """The multiplier of the parameter `name`: that of the first rule whose pattern matches it
    in full, else 1."""
    rule = _first_rule(rules, name)
    return 1.0 if rule is None else float(rules[rule][1])


def _first_rule(rules, name: str) -> int | None:
    return next((i for i, (pattern, _) in enumerate(rules) if re.fullmatch(pattern, name)), None)


def scale_by_lr_mults(rules) -> optax.GradientTransformation:
    """Scales each parameter's update (AdamW's, weight decay included) by its `optim.lr_mults`
    multiplier; a scanned encoder's stacked array is scaled layer by layer."""

    def scale(path, update):
        if not rules:
            return update
        mults = [lr_mult(rules, name) for name in layer_keys(_dotted(path), update.shape)]
        if len(set(mults)) == 1:
            return update if mults[0] == 1.0 else update * mults[0]
        per_layer = jnp.asarray(mults, update.dtype).reshape((-1,) + (1,) * (update.ndim - 1))
        return update * per_layer

    def update(updates, state, params=None):
        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def check_lr_mults(rules, trained: nnx.State) -> None:
    """Refuses a rule that takes no trained parameter: one whose pattern matches none (a typo,
    or frozen ones only), or whose matches all go to earlier rules (the first match wins), and
    logs how many parameters each rule takes."""
    sizes: dict[str, int] = {}
    for path, variable in nnx.to_flat_state(trained):
        names = _names(path, variable)
        for name in names:
            sizes[name] = math.prod(variable.shape) // len(names)
    taken = [0] * len(rules)
    for name, size in sizes.items():
        rule = _first_rule(rules, name)
        if rule is not None:
            taken[rule] += size
    for (pattern, mult), size in zip(rules, taken, strict=True):
        if size:
            log.info("optim.lr_mults: '%s' x%g takes %.2fM parameters", pattern, mult, size / 1e6)
        elif any(re.fullmatch(pattern, name) for name in sizes):
            raise ConfigError(
                f"optim.lr_mults: every parameter {pattern!r} matches is taken by an earlier "
                "pattern (the first match wins); put the narrower pattern first"
            )
        else:
            raise ConfigError(
                f"optim.lr_mults: {pattern!r} matches no trained parameter; names look like "
                "image.encoder.blocks.0.mlp.fc1.kernel, text.proj.kernel, logit_scale"
            )


def frozen_paths(pattern: str, params: nnx.State) -> frozenset[tuple]:
    """The paths of the parameter arrays that `optim.freeze` names: those whose names, dotted
    and one per layer as in exports and checkpoint errors (`image.encoder.blocks.3.mlp.fc1.
    kernel`), the regular expression matches in full. A scanned encoder stores its layers as
    one array, so the pattern must take all of its layers or none."""
    if not pattern:
        return frozenset()
    regex = re.compile(pattern)
    frozen, flat = [], list(nnx.to_flat_state(params))
    for path, variable in flat:
        key = ".".join(map(str, path))
        hits = [regex.fullmatch(k) is not None for k in _names(path, variable)]
        if all(hits):
            frozen.append(path)
        elif any(hits):
            raise ConfigError(
                f"optim.freeze={pattern!r} takes some layers of {key} but not all; with "
                "model.scan=true an encoder's layers are one array: freeze all of them, or set "
                "model.scan=false"
            )
    if not frozen:
        raise ConfigError(
            f"optim.freeze={pattern!r} matches no parameter; names look like "
            "image.encoder.blocks.0.mlp.fc1.kernel, text.proj.kernel, logit_scale ('image.*' "
            "freezes the image tower)"
        )
    if len(frozen) == len(flat):
        raise ConfigError(f"optim.freeze={pattern!r} freezes every parameter; nothing would train")
    return frozenset(frozen)


def trainable(frozen: frozenset[tuple]) -> nnx.filterlib.Filter:
    """The NNX filter of what is trained: every parameter but the `frozen` paths. Gradients
    are taken and optimizer state is kept only for these."""
    return nnx.All(nnx.Param, nnx.Not(nnx.filterlib.PathIn(*frozen))) if frozen else nnx.Param


def trained_names(model: nnx.State, trainable: nnx.filterlib.Filter) -> frozenset[str]:
    """The per-layer names (as `optim.freeze` matches them) of the trained parameters."""
    flat = nnx.to_flat_state(nnx.state(model, trainable))
    return frozenset(name for path, variable in flat for name in _names(path, variable))


def frozen_towers(model: nnx.State, trainable: nnx.filterlib.Filter) -> tuple[str, ...]:
    """The towers (`image`, `text`) of which no parameter is trained."""
    trained = {name.partition(".")[0] for name in trained_names(model, trainable)}
    return tuple(t for t in ("image", "text") if t not in trained)


def _names(path: tuple, variable) -> list[str]:
    return layer_keys(".".join(map(str, path)), variable.shape)


def _dotted(path) -> str:
    """'image.encoder.blocks.attn.query.kernel': the name of a leaf of a parameter tree."""
    return ".".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
