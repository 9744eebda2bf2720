"""Training: sharded state creation, the jitted contrastive step, and the loop around it."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vlx import evals, losses, optim, parallel
from vlx.data import pipeline
from vlx.data import tokenizer as tokenizer_lib
from vlx.data.transforms import normalize
from vlx.errors import ConfigError, DataError
from vlx.evals.common import EvalContext
from vlx.metrics import MetricWriter, NullProgress
from vlx.models.two_tower import TwoTower

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainState:
    """Static graph definitions, the sharded arrays, and where each array lives."""

    graphdefs: dict[str, nnx.GraphDef]
    arrays: dict[str, nnx.State]  # {'model': ..., 'opt': ...}
    shardings: dict[str, nnx.State]


def create_state(cfg, mesh, *, eos_id: int | None, tx: optax.GradientTransformation) -> TrainState:
    """Model and optimizer state, created already sharded: no array is ever whole on one device."""

    def create():
        model = TwoTower(cfg.model, eos_id=eos_id, rngs=nnx.Rngs(params=cfg.seed))
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    def init():
        model, opt = create()
        return {"model": nnx.state(model), "opt": nnx.state(opt)}

    with jax.set_mesh(mesh), nnx.logical_axis_rules(parallel.RULES):
        abstract_model, abstract_opt = nnx.eval_shape(create)
        gd_model, abs_model = nnx.split(abstract_model)
        gd_opt, abs_opt = nnx.split(abstract_opt)
        shardings = {
            "model": nnx.get_named_sharding(abs_model, mesh),
            "opt": nnx.get_named_sharding(abs_opt, mesh),
        }
        arrays = jax.jit(init, out_shardings=shardings)()
    return TrainState({"model": gd_model, "opt": gd_opt}, arrays, shardings)


def make_train_step(cfg, mesh, state: TrainState, lr_schedule: optax.Schedule) -> Callable:
    """jit(step)(arrays, batch) -> (arrays, metrics); arrays are donated, metrics replicated."""
    gd_model, gd_opt = state.graphdefs["model"], state.graphdefs["opt"]
    max_scale = cfg.model.max_logit_scale

    def step(arrays, batch):
        model = nnx.merge(gd_model, arrays["model"])
        opt = nnx.merge(gd_opt, arrays["opt"])
        images = normalize(batch["image"], cfg.data.normalize)

        def loss_fn(model):
            zimg, ztxt = model(images, batch["tokens"])
            scale, bias = model.scale_and_bias()
            loss, metrics = losses.contrastive_loss(
                zimg, ztxt, scale, bias, kind=cfg.loss.type, impl=cfg.loss.impl, mesh=mesh
            )
            return loss, (metrics, scale, bias)

        (loss, (metrics, scale, bias)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        lr = lr_schedule(opt.step[...])
        opt.update(model, grads)
        # As open_clip does: the stored log-scale never leaves [0, max], so it can come back down.
        model.logit_scale[...] = jnp.clip(model.logit_scale[...], 0.0, max_scale)
        metrics.update(
            loss=loss,
            temperature=1.0 / scale,
            logit_scale=scale,
            logit_bias=bias,
            grad_norm=optax.tree.norm(grads),
            lr=lr,
        )
        return {"model": nnx.state(model), "opt": nnx.state(opt)}, metrics

    return jax.jit(
        parallel.traced_on(mesh, step),
        in_shardings=(state.shardings, parallel.batch_sharding(mesh)),
        out_shardings=(state.shardings, parallel.replicated(mesh)),
        donate_argnums=0,
    )


def abstract_batch(cfg, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    sharding = parallel.batch_sharding(mesh)
    b, s, length = cfg.batch_size, cfg.model.image.image_size, cfg.model.text.context_length
    return {
        "image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8, sharding=sharding),
        "tokens": jax.ShapeDtypeStruct((b, length), jnp.int32, sharding=sharding),
    }


def load_tokenizer(cfg) -> tokenizer_lib.Tokenizer:
    tok = tokenizer_lib.load(cfg.data.tokenizer, cfg.model.text.context_length)
    if tok.vocab_size > cfg.model.text.vocab_size:
        raise ConfigError(
            f"model.text.vocab_size={cfg.model.text.vocab_size} is smaller than the vocabulary "
            f"of tokenizer {cfg.data.tokenizer!r} ({tok.vocab_size}); raise it to at least "
            f"{tok.vocab_size}"
        )
    return tok


def check_bad_fraction(skipped: int, delivered: int, limit: float, minimum: int = 1000) -> None:
    """Stops the run when too many examples fail to load (once enough have been seen)."""
    seen = skipped + delivered
    if seen >= minimum and skipped > limit * seen:
        raise DataError(
            f"{skipped} of {seen} examples failed to load ({skipped / seen:.1%}), more than "
            f"data.max_bad_fraction={limit}; see the warnings above for the reasons"
        )


def train(cfg, workdir: str | Path, progress=None) -> dict[str, float]:
    """Runs `cfg` to `cfg.total_steps`, writing metrics to `workdir`; returns the last metrics."""
    progress = progress or NullProgress()
    workdir = Path(workdir)
    mesh = parallel.make_mesh(cfg.mesh)
    local_batch = parallel.batch_size_per_process(cfg.batch_size, mesh)
    tok = load_tokenizer(cfg)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
        tok.save(workdir / "tokenizer")

    tx, lr_schedule = optim.make(cfg.optim, cfg.total_steps)
    state = create_state(cfg, mesh, eos_id=tok.eos_id, tx=tx)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(state.arrays["model"], nnx.Param)))
    log.info("model: %.2fM parameters; mesh %s", n_params / 1e6, dict(mesh.shape))

    t0 = time.perf_counter()
    step_fn = make_train_step(cfg, mesh, state, lr_schedule)
    step_fn = step_fn.lower(state.arrays, abstract_batch(cfg, mesh)).compile()
    compile_sec = time.perf_counter() - t0
    log.info("compiled the train step in %.1fs", compile_sec)

    host_batches = iter(
        pipeline.train_from_config(
            cfg,
            tok,
            batch_size=local_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    )
    batches = pipeline.to_mesh(host_batches, mesh, ahead=cfg.data.prefetch)
    writer = MetricWriter(workdir)
    writer.write(0, {"train/compile_sec": compile_sec, "train/num_params": n_params})
    # On CPU, many steps in flight over simulated devices can trip XLA's collective rendezvous
    # timeout; CPU execution is synchronous in practice, so waiting costs nothing there.
    block_each_step = jax.default_backend() == "cpu"
    arrays = state.arrays
    context = EvalContext(
        cfg, mesh, state.graphdefs["model"], arrays["model"], state.shardings["model"], tok
    )
    last: dict[str, float] = {}
    counts = {"truncated": 0, "skipped": 0}
    t_log, step_log = time.perf_counter(), 0
    try:
        for step in range(1, cfg.total_steps + 1):
            batch, extras, _ = next(batches)
            for key in counts:
                counts[key] += int(extras.get(key, 0))
            arrays, metrics = step_fn(arrays, batch)
            if block_each_step:
                jax.block_until_ready(metrics)
            progress.update(step)
            if step % cfg.log_every == 0 or step == cfg.total_steps:
                metrics = {f"train/{k}": float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                images_per_sec = (step - step_log) * cfg.batch_size / (now - t_log)
                t_log, step_log = now, step
                metrics["train/images_per_sec"] = images_per_sec
                metrics["train/images_per_sec_per_device"] = images_per_sec / mesh.size
                metrics["data/truncated"] = counts["truncated"]
                metrics["data/skipped"] = counts["skipped"]
                check_bad_fraction(counts["skipped"], step * local_batch, cfg.data.max_bad_fraction)
                writer.write(step, metrics)
                progress.update(step, metrics)
                last.update(metrics)
            if any(evals.due(e, step, cfg.total_steps) for e in cfg.evals.values()):
                context.model_state = arrays["model"]
                results = evals.run_all(cfg, context, step)
                writer.write(step, results)
                progress.write(
                    f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in results.items())
                )
                last.update(results)
                t_log = time.perf_counter()
    finally:
        writer.close()
        progress.close()
    summary = {"step": cfg.total_steps, **last}
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
