"""Benchmarks. `data`: decoded and augmented training images per second from a source."""

from __future__ import annotations

import os
import time

from vlx import compile_options
from vlx.data import pipeline, sources
from vlx.data import tokenizer as tokenizer_lib
from vlx.errors import ConfigError


def host_cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The host's CPU model, the cores this process may use and its widest x86 vector unit, e.g.
    `AMD EPYC, 2 cores, avx2`. CPU figures compare only on the same model: this project's
    2-core machines have differed from one session to the next by 2.5x in matmul throughput,
    and by which of JAX and PyTorch multiplies faster."""
    model, flags = compile_options.cpu_info(cpuinfo)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    vector = compile_options.vector_unit(flags)
    return ", ".join(filter(None, [model, f"{cores} cores", vector]))


def data_throughput(
    spec: str,
    data_cfg,
    *,
    image_size: int,
    batch_size: int = 64,
    num_workers: int = 0,
    batches: int = 20,
    warmup: int = 3,
    tokenizer: str = "demo",
) -> dict:
    """Times the training input pipeline alone: load, decode, random-resized-crop, tokenise."""
    source = sources.build(spec, split="train", image_size=image_size, data_cfg=data_cfg)
    tok = tokenizer_lib.load(tokenizer, context_length=77)
    ds = pipeline.train_dataset(
        [source],
        [1.0],
        tok,
        image_size=image_size,
        batch_size=batch_size,
        seed=0,
        data_cfg=data_cfg,
        num_workers=num_workers,
    )
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - t0
    images_per_sec = batches * batch_size / seconds
    return {
        "source": repr(source),
        "image_size": image_size,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "images_per_sec": round(images_per_sec, 1),
        "images_per_sec_per_worker": round(images_per_sec / max(1, num_workers), 1),
    }


def _vlx_step(cfg, *, block: bool):
    """Compiles the train step of `cfg` for a synthetic batch. Returns `(step, info)`: `step()`
    runs one step (waiting for it when `block`) and returns its metrics; `info` has the mesh,
    the compile time and the parameter count."""
    import jax

    from vlx import optim, parallel, train

    mesh = parallel.make_mesh(cfg.mesh)
    parallel.batch_size_per_process(cfg.batch_size, mesh)
    tx, schedule = optim.make(cfg.optim, cfg.total_steps)
    eos = cfg.model.text.vocab_size - 1
    state = train.create_state(cfg, mesh, eos_id=eos, tx=tx)
    t0 = time.perf_counter()
    step_fn = train.make_train_step(cfg, mesh, state, schedule)
    step_fn = step_fn.lower(state.arrays, train.abstract_batch(cfg, mesh)).compile()
    compile_s = time.perf_counter() - t0
    batch = _synthetic_batch(cfg, mesh, eos)
    carry = {"arrays": state.arrays}

    def step():
        carry["arrays"], metrics = step_fn(carry["arrays"], batch)
        if block:
            jax.block_until_ready((carry["arrays"], metrics))
        return metrics

    info = {
        "mesh": mesh,
        "compile_s": compile_s,
        **train.size_and_flops(cfg, state.arrays["model"], state.trainable),
    }
    return step, info


def train_step_throughput(
    cfg, *, steps: int = 10, warmup: int = 3, profile_dir: str | None = None
) -> dict:
    """Compiles the train step of `cfg`, then times `steps` steps on a synthetic batch.

    Reports compile time, step time, images/s (total and per device), the analytic FLOPs of a
    step (`vlx.flops`), achieved TFLOP/s per device and MFU against the device's peak (the
    vendor table; on CPU, a measured matmul peak), and peak device memory where reported.
    With `profile_dir`, three more steps run under `jax.profiler` after the timed ones."""
    import jax

    # On CPU, many steps in flight over simulated devices can trip XLA's collective rendezvous
    # (see train()); elsewhere steps are queued as a training run queues them.
    step, info = _vlx_step(cfg, block=jax.default_backend() == "cpu")
    for _ in range(warmup):
        jax.block_until_ready(step())
    t0 = time.perf_counter()
    for _ in range(steps):
        metrics = step()
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / steps
    if profile_dir:
        with jax.profiler.trace(profile_dir):
            for _ in range(3):
                metrics = step()
            jax.block_until_ready(metrics)
    return _step_report(cfg, info, step_s, metrics)


def _step_report(cfg, info: dict, step_s: float, metrics) -> dict:
    """The JSON report of a vlx train step that took `step_s` seconds."""
    import jax
    import numpy as np

    from vlx import flops
    from vlx.metrics import peak_memory_gb

    devices = info["mesh"].size
    kind = jax.devices()[0].device_kind
    dtype = cfg.model.dtype
    step_flops = info["step_flops"]
    peak, peak_source = flops.device_peak(kind, dtype), "table"
    if peak is None and jax.default_backend() == "cpu":
        peak, peak_source = cpu_matmul_peak(dtype) / devices, "measured matmul (host / devices)"
    used = flops.utilization(step_flops["total"], step_s, devices, peak)
    memory = peak_memory_gb()
    return {
        "backend": jax.default_backend(),
        "device_kind": kind,
        "host_cpu": host_cpu(),
        "cpu_matmul": compile_options.for_model(cfg.model, info["mesh"]),
        "devices": devices,
        "mesh": dict(info["mesh"].shape),
        "dtype": dtype,
        "batch_size": cfg.batch_size,
        "params": info["params"],
        "trained_params": info["trained_params"],
        "compile_s": round(info["compile_s"], 2),
        "step_s": round(step_s, 4),
        "images_per_s": round(cfg.batch_size / step_s, 1),
        "images_per_s_per_device": round(cfg.batch_size / step_s / devices, 1),
        "gflops_per_step": round(step_flops["total"] / 1e9, 1),
        "gflops_per_step_parts": {k: round(v / 1e9, 1) for k, v in step_flops.items()},
        "tflops_per_device": round(used["tflops_per_device"], 3),
        "peak_tflops_per_device": round(peak / 1e12, 3) if peak else None,
        "peak_source": peak_source if peak else None,
        "mfu": round(used["mfu"], 4) if peak else None,
        "peak_memory_gb": round(memory, 2) if memory else None,
        "loss": float(np.asarray(metrics["loss"])),
    }


def side_by_side(cfg, model_name: str, *, steps: int = 10, warmup: int = 2) -> dict:
    """vlx's train step of `cfg` and open_clip's step of `model_name` (same batch size;
    `amp_bf16` when `cfg` computes in bfloat16, else fp32) in this process, taking turns:
    rounds of three steps of one then three of the other, the first step after each switch
    untimed, and the order swapped each round (vlx first, then open_clip first, ...). Both
    meet the same machine, and neither always goes first.

    Why rounds: on this project's 2-core machine, a step right after the other framework's
    step ran up to 25% slower (vlx) and 10% (open_clip), with the same page faults and huge
    pages (/proc/vmstat), and separate processes run one after the other measured up to 7%
    apart by their place in the sequence. Reports vlx's usual fields and open_clip's, from the
    median timed step of each, and their ratio."""
    import statistics

    import jax

    device = {"cpu": "cpu", "gpu": "cuda"}.get(jax.default_backend())
    if device is None:
        raise ConfigError(
            f"vlx bench --open-clip: open_clip runs on a CPU or an NVIDIA GPU, not on "
            f"{jax.default_backend()}; run vlx bench without --open-clip there"
        )
    vlx_step, info = _vlx_step(cfg, block=True)
    oc_step, oc_info = _open_clip_step(
        model_name,
        cfg.batch_size,
        device=device,
        precision="amp_bf16" if cfg.model.dtype == "bfloat16" else "fp32",
        compile=False,
    )
    runners = {"vlx": vlx_step, "open_clip": oc_step}
    for _ in range(warmup):
        for run in runners.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    results = {}
    timed_per_turn = 2
    for turn in range(-(-steps // timed_per_turn)):
        for name in runners if turn % 2 == 0 else reversed(runners):
            results[name] = runners[name]()
            for _ in range(min(timed_per_turn, steps - len(times[name]))):
                t0 = time.perf_counter()
                results[name] = runners[name]()
                times[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    report = _step_report(cfg, info, medians["vlx"], results["vlx"])
    oc_info.update(
        step_s=round(medians["open_clip"], 4),
        images_per_s=round(cfg.batch_size / medians["open_clip"], 2),
        loss=float(results["open_clip"].detach()),
    )
    report["step_s_each"] = [round(t, 4) for t in times["vlx"]]
    oc_info["step_s_each"] = [round(t, 4) for t in times["open_clip"]]
    report["open_clip"] = oc_info
    report["vlx_over_open_clip"] = round(medians["open_clip"] / medians["vlx"], 4)
    return report


def _synthetic_batch(cfg, mesh, eos: int) -> dict:
    """Random uint8 images and token rows ending in `eos`, built shard by shard on the mesh."""
    import jax
    import numpy as np

    from vlx import parallel

    sharding = parallel.batch_sharding(mesh)
    b, s, length = cfg.batch_size, cfg.model.image.image_size, cfg.model.text.context_length
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)
    tokens = rng.integers(0, eos, (b, length), dtype=np.int32)
    tokens[:, -1] = eos
    return {
        "image": jax.make_array_from_callback(images.shape, sharding, images.__getitem__),
        "tokens": jax.make_array_from_callback(tokens.shape, sharding, tokens.__getitem__),
    }


MATMUL_FORMS = ("x@w", "x.T@y")


def matmul_throughput(
    tokens: int,
    d_in: int,
    d_out: int,
    *,
    form: str = "x@w",
    dtype: str = "float32",
    framework: str = "jax",
    torch_device: str = "cpu",
    cpu_matmul: str = "default",
    reps: int = 10,
) -> dict:
    """Time of one matmul of a dense layer over `tokens` rows, the best of `reps`.

    `x@w` is x [tokens, d_in] @ w [d_in, d_out], the form of the forward pass and of the input
    gradient. `x.T@y` is x [tokens, d_in].T @ y [tokens, d_out], the weight gradient: it
    contracts over the tokens, the leading axis of both operands, which a GEMM must either
    read transposed or have copied first. Both are 2 * tokens * d_in * d_out FLOPs. JAX runs
    on the first device (on CPU: the whole host, with the matmul library `cpu_matmul`, as
    `model.cpu_matmul` picks it); `framework="torch"` times PyTorch on `torch_device`
    instead."""
    if form not in MATMUL_FORMS:
        raise ValueError(f"matmul form {form!r}: choose one of {', '.join(MATMUL_FORMS)}")
    shapes = ((tokens, d_in), (d_in, d_out) if form == "x@w" else (tokens, d_out))
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        device = jax.devices()[0]
        x, y = (jnp.ones(s, jnp.dtype(dtype), device=device) for s in shapes)
        library = compile_options.library(cpu_matmul, device.platform, max(d_in, d_out))
        options = compile_options.options(library)
        fn = jax.jit(lambda x, y: x @ y if form == "x@w" else x.T @ y, compiler_options=options)

        def run():
            fn(x, y).block_until_ready()

        version = f"jax {jax.__version__}, {device.platform}"
        if library:
            version += f", {library} matmuls"
    elif framework == "torch":
        import torch

        device = torch.device(torch_device)
        x, y = (torch.ones(s, dtype=getattr(torch, dtype), device=device) for s in shapes)

        def run():
            out = x @ y if form == "x@w" else x.T @ y
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        where = f"cpu, {torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
        version = f"torch {torch.__version__}, {where}"
    else:
        raise ValueError(f"framework {framework!r}: choose jax or torch")
    run()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return {
        "framework": version,
        "host_cpu": host_cpu(),
        "form": form,
        "tokens": tokens,
        "d_in": d_in,
        "d_out": d_out,
        "dtype": dtype,
        "ms": float(f"{best * 1e3:.4g}"),
        "gflop_per_s": float(f"{2 * tokens * d_in * d_out / best / 1e9:.4g}"),
    }


def cpu_matmul_peak(dtype: str = "float32", n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of a large square matmul on the host (all cores), the best of `reps` in either of
    XLA's matmul libraries: the host's peak whichever library a step runs with (Eigen's GEMM
    is 25% slower than YNNPACK's at this size on an AVX2 AMD EPYC, which would have put a ViT-S
    step with Eigen's matmuls above 100% MFU)."""
    rows = (
        matmul_throughput(n, n, n, dtype=dtype, cpu_matmul=library, reps=reps)
        for library in ("default", "eigen")
    )
    return max(row["gflop_per_s"] for row in rows) * 1e9


def loss_memory(batch_size: int, embed_dim: int = 512) -> list[dict]:
    """Per-device temporary memory XLA plans for the loss and its gradient at global
    `batch_size` on the current mesh (all devices on the batch axes), for each loss form.

    Read from the compiled program (`memory_analysis`), so it works on CPU, where devices
    report no live memory. The gathered forms hold [B_local, B] logits per device, the ring
    [B_local, B_local]; neither ever builds the global B x B."""
    import jax
    import jax.numpy as jnp

    from vlx import losses, parallel

    mesh = parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    sharding = parallel.batch_sharding(mesh)
    z = jax.ShapeDtypeStruct((batch_size, embed_dim), jnp.float32, sharding=sharding)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    rows = []
    for kind, impl in (("softmax", "gather"), ("sigmoid", "gather"), ("sigmoid", "ring")):

        def loss(zimg, ztxt, scale, bias, kind=kind, impl=impl):
            return losses.contrastive_loss(
                zimg, ztxt, scale, bias, kind=kind, impl=impl, mesh=mesh
            )[0]

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        compiled = grad.lower(z, z, scalar, scalar).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        local = batch_size // mesh.size
        rows.append(
            {
                "loss": f"{kind}/{impl}",
                "batch_size": batch_size,
                "devices": mesh.size,
                "temp_mib_per_device": round(temp / 2**20, 1),
                "logits_block_mib": round(
                    4 * local * (local if impl == "ring" else batch_size) / 2**20, 1
                ),
                "global_logits_mib": round(4 * batch_size * batch_size / 2**20, 1),
            }
        )
    return rows


def _open_clip_step(
    model_name: str, batch_size: int, *, device: str, precision: str, compile: bool
):
    """open_clip's training step (AdamW, its ClipLoss) on a random batch, as its training
    script runs it. Returns `(step, info)`: `step()` runs one step and returns the loss
    (`step(wait=False)` leaves a GPU step queued); `info` describes the run."""
    import open_clip
    import torch

    model = open_clip.create_model(model_name, pretrained=None, device=device)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    if compile:
        model = torch.compile(model)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.2)
    unwrapped = getattr(model, "_orig_mod", model)
    size = unwrapped.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    images = torch.randn(batch_size, 3, size, size, device=device)
    tokens = torch.randint(0, 49407, (batch_size, unwrapped.context_length), device=device)
    tokens[:, -1] = 49407
    autocast = torch.autocast(
        device_type=torch.device(device).type,
        dtype=torch.bfloat16,
        enabled=precision == "amp_bf16",
    )
    cuda = torch.device(device).type == "cuda"

    def step(wait: bool = True):
        with autocast:
            img, txt, scale = model(images, tokens)[:3]
            loss = loss_fn(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if wait and cuda:
            torch.cuda.synchronize()
        return loss

    info = {
        "framework": f"open_clip {open_clip.__version__}, torch {torch.__version__}",
        "model": model_name,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "host_cpu": host_cpu(),
        "precision": precision,
        "compile": compile,
        "batch_size": batch_size,
        "params": params,
    }
    return step, info


def open_clip_step(
    model_name: str,
    batch_size: int,
    *,
    steps: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    precision: str = "fp32",
    compile: bool = False,
) -> dict:
    """Images/s of open_clip's own training step on `device`: `precision` fp32 or amp_bf16
    (autocast), optionally `torch.compile`d. The like-for-like reference for
    `train_step_throughput`."""
    import torch

    step, info = _open_clip_step(
        model_name, batch_size, device=device, precision=precision, compile=compile
    )
    for _ in range(warmup):
        step()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step(wait=False)
    if cuda:
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() if cuda else None
    return {
        **info,
        "step_s": round(step_s, 4),
        "images_per_s": round(batch_size / step_s, 2),
        "peak_memory_gb": round(peak / 2**30, 2) if peak is not None else None,
        "loss": float(loss.detach()),
    }
