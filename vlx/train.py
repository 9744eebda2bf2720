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
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from vlx import checkpoint as checkpoint_lib
from vlx import compile_options, config, evals, flops, losses, optim, parallel
from vlx.checkpoint import Checkpointer
from vlx.data import pipeline
from vlx.data import tokenizer as tokenizer_lib
from vlx.data.transforms import normalize
from vlx.errors import CheckpointError, ConfigError, DataError, TrainingError
from vlx.evals.common import EvalContext
from vlx.export import imports
from vlx.metrics import MetricWriter, NullProgress, peak_memory_gb
from vlx.models.two_tower import TwoTower

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainState:
    """Static graph definitions, the sharded arrays, and where each array lives."""

    graphdefs: dict[str, nnx.GraphDef]
    arrays: dict[str, nnx.State]  # {'model': ..., 'opt': ...}
    shardings: dict[str, nnx.State]
    trainable: nnx.filterlib.Filter = nnx.Param  # what the optimizer updates (`optim.freeze`)


def create_state(
    cfg,
    mesh,
    *,
    eos_id: int | None,
    tx: optax.GradientTransformation | None,
    abstract: bool = False,
) -> TrainState:
    """Model and optimizer state, created already sharded: no array is ever whole on one device.

    With `tx=None`, the model alone (for evaluation). `abstract`: the arrays are only shapes,
    dtypes and shardings (nothing is initialised or allocated), for a checkpoint restore that
    fills every one of them."""

    def create():
        model = TwoTower(cfg.model, eos_id=eos_id, rngs=nnx.Rngs(params=cfg.seed))
        if tx is None:
            return {"model": model}
        frozen = optim.frozen_paths(cfg.optim.freeze, nnx.state(model, nnx.Param))
        return {"model": model, "opt": nnx.Optimizer(model, tx, wrt=optim.trainable(frozen))}

    def init():
        return {name: nnx.state(obj) for name, obj in create().items()}

    with jax.set_mesh(mesh), nnx.logical_axis_rules(parallel.RULES):
        shapes = nnx.eval_shape(create)
        if tx is not None:
            optim.check_lr_mults(cfg.optim.lr_mults, nnx.state(shapes["model"], shapes["opt"].wrt))
        graphdefs, shardings, structs = {}, {}, {}
        for name, obj in shapes.items():
            graphdefs[name], abstract_state = nnx.split(obj)
            shardings[name] = nnx.get_named_sharding(abstract_state, mesh)
            structs[name] = jax.tree.map(
                lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                abstract_state,
                shardings[name],
            )
        arrays = structs if abstract else jax.jit(init, out_shardings=shardings)()
    if tx is None:
        return TrainState(graphdefs, arrays, shardings)
    return TrainState(graphdefs, arrays, shardings, trainable=shapes["opt"].wrt)


def make_train_step(cfg, mesh, state: TrainState, lr_schedule: optax.Schedule) -> Callable:
    """jit(step)(arrays, batch) -> (arrays, metrics); arrays are donated, metrics replicated."""
    gd_model, gd_opt = state.graphdefs["model"], state.graphdefs["opt"]
    max_scale = cfg.model.max_logit_scale

    def loss_fn(model, images, tokens, rng, embeddings=None):
        zimg, ztxt = model(images, tokens, rng=rng) if embeddings is None else embeddings
        scale, bias = model.scale_and_bias()
        loss, metrics = losses.contrastive_loss(
            zimg, ztxt, scale, bias, kind=cfg.loss.type, impl=cfg.loss.impl, mesh=mesh
        )
        return loss, (metrics, scale, bias)

    def step(arrays, batch):
        model = nnx.merge(gd_model, arrays["model"])
        opt = nnx.merge(gd_opt, arrays["opt"])
        images = normalize(batch["image"], cfg.data.normalize)

        # Training randomness (patch dropout) from (seed, step): nothing to checkpoint.
        rng = None
        if cfg.model.image.patch_dropout > 0:
            rng = jax.random.fold_in(jax.random.key(cfg.seed), opt.step[...])
        if cfg.microbatches == 1:
            wrt = nnx.DiffState(0, state.trainable)
            grad_fn = nnx.value_and_grad(loss_fn, argnums=wrt, has_aux=True)
            (loss, (metrics, scale, bias)), grads = grad_fn(model, images, batch["tokens"], rng)
        else:
            loss, (metrics, scale, bias), grads = grad_cache(
                model, images, batch["tokens"], cfg.microbatches, loss_fn, rng, state.trainable
            )
        lr = lr_schedule(opt.step[...])
        opt.update(model, grads)
        # As open_clip does: the stored log-scale never leaves [0, max], so it can come back down.
        model.logit_scale[...] = jnp.clip(model.logit_scale[...], 0.0, max_scale)
        new = {"model": nnx.state(model), "opt": nnx.state(opt)}
        finite = jnp.isfinite(loss)
        if cfg.skip_nonfinite:
            new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, arrays)
        metrics.update(
            nonfinite=1.0 - finite.astype(jnp.float32),
            loss=loss,
            temperature=1.0 / scale,
            logit_scale=scale,
            logit_bias=bias,
            grad_norm=optax.tree.norm(grads),
            lr=lr,
        )
        return new, metrics

    return jax.jit(
        parallel.traced_on(mesh, step),
        in_shardings=(state.shardings, parallel.batch_sharding(mesh)),
        out_shardings=(state.shardings, parallel.replicated(mesh)),
        donate_argnums=0,
        compiler_options=compile_options.options(compile_options.for_model(cfg.model, mesh)),
    )


def grad_cache(model, images, tokens, k: int, loss_fn, rng=None, wrt=nnx.Param):
    """(loss, aux, grads) of `loss_fn` over the whole batch, with the towers run on `k`
    microbatches at a time (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under
    Memory Limited Setup"): embed every microbatch without keeping activations, take the loss
    and its gradient with respect to all embeddings at once (every negative in the batch), then
    backpropagate each microbatch's embedding gradients through its towers and sum. Equal to the
    full-batch gradient up to float rounding; the towers run forward twice. Gradients are
    taken for the parameters `wrt` selects."""
    graphdef, params, rest = nnx.split(model, wrt, ...)

    # Model state enters every transform as an argument, never by closure: NNX refuses
    # variables traced at another level (the towers' nnx.scan checks).
    def embed(params, rest, imgs, toks, j):
        key = None if rng is None else jax.random.fold_in(rng, j)  # the same in both passes
        return nnx.merge(graphdef, params, rest)(imgs, toks, rng=key)

    def split(x):  # [B, ...] -> [k, B/k, ...]; microbatch j holds rows j, j+k, ... (all shards)
        return jnp.moveaxis(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 1, 0)

    def join(z):  # [k, B/k, E] -> [B, E] in the original row order
        return jnp.moveaxis(z, 0, 1).reshape(-1, z.shape[-1])

    micro = (split(images), split(tokens), jnp.arange(k))
    _, (zimg, ztxt) = jax.lax.scan(lambda c, mb: (c, embed(*c, *mb)), (params, rest), micro)

    def head(params, zimg, ztxt, rest):
        return loss_fn(nnx.merge(graphdef, params, rest), None, None, None, (zimg, ztxt))

    (loss, aux), (head_grads, dzimg, dztxt) = jax.value_and_grad(
        head, argnums=(0, 1, 2), has_aux=True
    )(params, join(zimg), join(ztxt), rest)

    def backward(carry, mb):
        params, rest, total = carry
        imgs, toks, j, dzi, dzt = mb
        _, vjp = jax.vjp(lambda p, r: embed(p, r, imgs, toks, j), params, rest)
        grads, _ = vjp((dzi, dzt))
        return (params, rest, jax.tree.map(jnp.add, total, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (_, _, tower_grads), _ = jax.lax.scan(
        backward, (params, rest, zeros), (*micro, split(dzimg), split(dztxt))
    )
    return loss, aux, jax.tree.map(jnp.add, tower_grads, head_grads)


def count_params(model_state: nnx.State, which: nnx.filterlib.Filter) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model_state, which)))


def size_and_flops(cfg, model_state: nnx.State, trainable: nnx.filterlib.Filter) -> dict:
    """The model's parameter count, how many of them train, and `vlx.flops`' count of a
    training step (per tower and in total) with those trained."""
    trained = optim.trained_names(model_state, trainable)
    return {
        "params": count_params(model_state, nnx.Param),
        "trained_params": count_params(model_state, trainable),
        "step_flops": flops.train_step(cfg.model, cfg.batch_size, trained=trained),
    }


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


def train(cfg, workdir: str | Path, progress=None, stop=None) -> dict[str, float]:
    """Runs `cfg` to `cfg.total_steps`, writing metrics and checkpoints to `workdir`.

    Resumes from the latest complete checkpoint in `workdir`, if any. `stop` (anything with
    `is_set()`, e.g. a threading.Event set by a signal handler) ends the run after the current
    step with a checkpoint. Returns the last metrics (with `stopped` when stopped early).
    """
    progress = progress or NullProgress()
    workdir = Path(workdir)
    latest = latest_checkpoint(workdir)
    if imports.derives_config(cfg.init_from):
        imports.derive_config(cfg, resumed=latest)
        config.validate(cfg)
    mesh = parallel.make_mesh(cfg.mesh)
    local_batch = parallel.batch_size_per_process(cfg.batch_size, mesh)
    tok = load_tokenizer(cfg)
    # What a user can get wrong (data and evaluation paths, the checkpoint to resume or start
    # from) fails here in seconds, before the model is built and compiled and before the
    # workdir's config is written.
    host_batches = iter(
        pipeline.train_from_config(
            cfg,
            tok,
            batch_size=local_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    )
    eval_sources = evals.open_sources(cfg)
    start_from = find_start(cfg, latest)
    if start_from.resume and start_from.step >= cfg.total_steps:
        log.info("the run in %s has already reached step %d", workdir, start_from.step)
        return finished_summary(workdir, start_from.step)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2))
        tok.save(workdir / "tokenizer")

    tx, lr_schedule = optim.make(cfg.optim, cfg.total_steps)
    state = create_state(cfg, mesh, eos_id=tok.eos_id, tx=tx, abstract=start_from.resume)
    arrays, start, data_state = restore_or_init(cfg, start_from, state)
    size = size_and_flops(cfg, arrays["model"], state.trainable)
    n_params, n_trained = size["params"], size["trained_params"]
    step_flops = size["step_flops"]["total"]
    frozen = f", {(n_params - n_trained) / 1e6:.2f}M frozen" if n_trained < n_params else ""
    log.info("model: %.2fM parameters%s; mesh %s", n_params / 1e6, frozen, dict(mesh.shape))
    peak = flops.device_peak(jax.devices()[0].device_kind, cfg.model.dtype)

    t0 = time.perf_counter()
    step_fn = make_train_step(cfg, mesh, state, lr_schedule)
    step_fn = step_fn.lower(arrays, abstract_batch(cfg, mesh)).compile()
    compile_sec = time.perf_counter() - t0
    library = compile_options.for_model(cfg.model, mesh)
    matmuls = f" ({library} matmuls)" if library else ""
    log.info("compiled the train step in %.1fs%s", compile_sec, matmuls)

    counts = {"truncated": 0, "skipped": 0}
    if data_state:
        host_batches.set_state(data_state["iterator"])
        counts.update(data_state["counts"])
    batches = pipeline.to_mesh(host_batches, mesh, ahead=cfg.data.prefetch)
    writer = MetricWriter(workdir, truncate_after=start if start else -1)
    if start == 0:
        writer.write(
            0,
            {
                "train/compile_sec": compile_sec,
                "train/num_params": n_params,
                "train/num_trained_params": n_trained,
                "train/gflops_per_step": step_flops / 1e9,
            },
        )
    ckpt = Checkpointer(workdir / "checkpoints", cfg.checkpoint)
    # On CPU, many steps in flight over simulated devices can trip XLA's collective rendezvous
    # timeout; CPU execution is synchronous in practice, so waiting costs nothing there.
    block_each_step = jax.default_backend() == "cpu"
    context = EvalContext(
        cfg,
        mesh,
        state.graphdefs["model"],
        arrays["model"],
        state.shardings["model"],
        tok,
        sources=eval_sources,
        fixed_images="image" in optim.frozen_towers(arrays["model"], state.trainable),
    )
    last: dict[str, float] = {}
    # Skipped updates add up on the device, so counting them never syncs the host.
    skipped_updates = jnp.asarray(float(counts.pop("skipped_updates", 0.0)))
    t_log, step_log, waited = time.perf_counter(), start, 0.0
    step = start
    try:
        for step in range(start + 1, cfg.total_steps + 1):
            t_wait = time.perf_counter()
            batch, extras, iterator_state = next(batches)
            waited += time.perf_counter() - t_wait
            for key in counts:
                counts[key] += int(extras.get(key, 0))
            arrays, metrics = step_fn(arrays, batch)
            skipped_updates = skipped_updates + metrics["nonfinite"]
            if block_each_step:
                jax.block_until_ready(metrics)
            progress.update(step)
            stopping = stop_agreed(stop, step, cfg.log_every)
            saving = step % cfg.checkpoint.every_steps == 0 or step == cfg.total_steps or stopping
            if step % cfg.log_every == 0 or saving:
                host = jax.device_get(metrics)
                if not cfg.skip_nonfinite and host["nonfinite"]:
                    raise TrainingError(nonfinite_message(step, ckpt))
            if step % cfg.log_every == 0 or step == cfg.total_steps:
                metrics = {f"train/{k}": float(v) for k, v in host.items() if k != "nonfinite"}
                now = time.perf_counter()
                images_per_sec = (step - step_log) * cfg.batch_size / (now - t_log)
                used = flops.utilization(
                    (step - step_log) * step_flops, now - t_log, mesh.size, peak
                )
                metrics["data/wait_fraction"] = waited / (now - t_log)
                t_log, step_log, waited = now, step, 0.0
                metrics["train/images_per_sec"] = images_per_sec
                metrics["train/images_per_sec_per_device"] = images_per_sec / mesh.size
                metrics.update({f"train/{k}": v for k, v in used.items()})
                if (memory := peak_memory_gb()) is not None:
                    metrics["train/peak_memory_gb"] = memory
                metrics["data/truncated"] = counts["truncated"]
                metrics["data/skipped"] = counts["skipped"]
                if cfg.skip_nonfinite:
                    metrics["train/skipped_updates"] = float(skipped_updates)
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
                t_log, step_log, waited = time.perf_counter(), step, 0.0
            if saving:
                data = {
                    "iterator": iterator_state,
                    "counts": {**counts, "skipped_updates": float(skipped_updates)},
                }
                blocked = ckpt.save(step, arrays, data, cfg)
                writer.write(step, {"checkpoint/blocking_sec": blocked})
            if stopping:
                last["stopped"] = step
                break
    finally:
        host_batches.close()
        ckpt.close()
        writer.close()
        progress.close()
    summary = {"step": step, **last}
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def finished_summary(workdir: Path, step: int) -> dict:
    """The summary a finished run wrote (its last metrics), kept as it is."""
    path = workdir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {"step": step}


def stop_agreed(stop, step: int, every: int) -> bool:
    """Whether to stop after `step`. A single process reads its flag every step; several
    processes must stop at the same step, so they agree at log steps (a host sync anyway): a
    stop requested in any process stops all of them."""
    if stop is None:
        return False
    if jax.process_count() == 1:
        return stop.is_set()
    if step % every:
        return False
    flags = multihost_utils.process_allgather(np.asarray(stop.is_set()))
    return bool(np.any(flags))


@dataclasses.dataclass
class Start:
    """Where a run's weights come from, decided before the model is built: this workdir's
    latest checkpoint (`resume`), a checkpoint to take the model or some `towers` from
    (`init_from`), or neither (a fresh model, or PyTorch weights: `init_from` hf:/open_clip:)."""

    checkpointer: Checkpointer | None = None
    step: int = 0
    resume: bool = False
    towers: tuple[str, ...] = imports.TOWERS


def latest_checkpoint(workdir: Path) -> tuple[Checkpointer, int] | None:
    """The latest complete checkpoint of the run in `workdir`, if it has one."""
    ckpt_dir = workdir / "checkpoints"
    if ckpt_dir.is_dir():
        ckpt = Checkpointer(ckpt_dir, read_only=True)
        step = ckpt.latest_step()
        if step is not None:
            return ckpt, step
    return None


def find_start(cfg, latest: tuple[Checkpointer, int] | None) -> Start:
    """Where the run starts: `latest`, the run's own latest checkpoint, else `init_from`.
    Refuses to resume a checkpoint of another model, and fails on an `init_from` without
    one, before anything is built or written."""
    if latest is not None:
        refuse_other_model(*latest, cfg)
        return Start(*latest, resume=True)
    if cfg.init_from and not imports.is_pytorch(cfg.init_from):
        source, towers = imports.split_tower(cfg.init_from)
        return Start(*checkpoint_lib.find(source), towers=towers)
    return Start()


def restore_or_init(cfg, start: Start, state: TrainState) -> tuple[dict, int, dict | None]:
    """(arrays, first step, data state) from `start`, else the freshly initialised state."""
    if start.resume:
        arrays, data_state = start.checkpointer.restore(start.step, state.arrays)
        log.info(
            "resuming from the checkpoint of step %d in %s",
            start.step,
            start.checkpointer.directory,
        )
        return arrays, start.step, data_state
    if start.checkpointer is not None:
        if start.towers == imports.TOWERS:
            arrays, _ = start.checkpointer.restore(start.step, state.arrays, only=("model",))
        else:
            model = start.checkpointer.load_towers(start.step, start.towers, state.arrays["model"])
            arrays = {**state.arrays, "model": model}
        log.info(
            "initialised %s from %s (step %d); starting at step 0",
            "+".join(start.towers),
            cfg.init_from,
            start.step,
        )
        return arrays, 0, None
    if imports.is_pytorch(cfg.init_from):
        return {**state.arrays, "model": imports.load(cfg, state.arrays["model"])}, 0, None
    return state.arrays, 0, None


def refuse_other_model(ckpt: Checkpointer, step: int, cfg) -> None:
    differences = checkpoint_lib.model_config_differences(ckpt.saved_config(step), cfg)
    if differences:
        raise CheckpointError(
            f"{ckpt.directory / str(step)} was written for a different model: "
            + "; ".join(differences)
            + ". Use another --workdir, or --config.init_from to start from its weights"
        )


def nonfinite_message(step: int, ckpt: Checkpointer) -> str:
    good = ckpt.latest_step()
    where = (
        f"the last good checkpoint is step {good} in {ckpt.directory}"
        if good is not None
        else "no checkpoint was saved yet"
    )
    return (
        f"the loss is not finite at step {step}; {where}. Lower optim.lr or set "
        "--config.skip_nonfinite=true to skip such updates"
    )


@dataclasses.dataclass
class Trained:
    """A workdir's model at one checkpoint, restored onto the mesh of its config."""

    cfg: object
    step: int
    mesh: jax.sharding.Mesh
    tokenizer: tokenizer_lib.Tokenizer
    state: TrainState  # the model only
    model: nnx.State  # its arrays at `step`


@dataclasses.dataclass
class SavedRun:
    """A workdir opened for reading: its config (plus overrides, validated), its tokenizer and a
    checkpoint step that exists. Cheap: nothing is built or restored until `load_trained`, so
    callers check what they need (evaluation data, an export format) first."""

    cfg: object
    step: int
    tokenizer: tokenizer_lib.Tokenizer
    checkpointer: Checkpointer


def open_run(workdir: str | Path, step: int | None = None, overrides=()) -> SavedRun:
    """`workdir`'s run at checkpoint `step` (default: the latest); for `vlx eval` and `vlx
    export`."""
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise ConfigError(f"{workdir} has no config.json; is it a vlx workdir?")
    cfg = config.from_dict(json.loads((workdir / "config.json").read_text()))
    for item in overrides:
        config.apply_override(cfg, item)
    config.validate(cfg)
    ckpt = Checkpointer(workdir / "checkpoints", read_only=True)
    step = ckpt.latest_step() if step is None else step
    if step is None or step not in ckpt.manager.all_steps():
        raise CheckpointError(
            f"no checkpoint of step {step} in {workdir / 'checkpoints'}; "
            f"available: {sorted(ckpt.manager.all_steps())}"
        )
    tok = tokenizer_lib.load(str(workdir / "tokenizer"), cfg.model.text.context_length)
    return SavedRun(cfg, step, tok, ckpt)


def load_trained(run: SavedRun) -> Trained:
    """`run`'s model restored onto the mesh of its config."""
    mesh = parallel.make_mesh(run.cfg.mesh)
    state = create_state(run.cfg, mesh, eos_id=run.tokenizer.eos_id, tx=None, abstract=True)
    arrays, _ = run.checkpointer.restore(run.step, state.arrays, only=("model",))
    return Trained(run.cfg, run.step, mesh, run.tokenizer, state, arrays["model"])
