"""The `vlx` command: subcommands that parse arguments and call the library."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from vlx import hostenv
from vlx.errors import ConfigError, VlxError


def _start_processes(args) -> None:
    """Joins a multi-process run when asked to; only process 0 then logs at INFO."""
    from vlx import distributed

    coords = distributed.Coordinates(
        args.coordinator, args.num_processes, args.process_id, args.init_timeout
    )
    if distributed.initialize(coords) != "single":
        import jax

        if jax.process_index() != 0:
            logging.getLogger().setLevel(logging.WARNING)


def _train(args, overrides: list[str]) -> int:
    from vlx import config, evals, train
    from vlx.metrics import Progress

    cfg = config.load(args.config, overrides)
    _start_processes(args)
    t0 = time.perf_counter()
    stop, previous = _stop_on_signals()
    try:
        summary = train.train(cfg, args.workdir, progress=Progress(cfg.total_steps), stop=stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    minutes, seconds = divmod(int(time.perf_counter() - t0), 60)
    if "stopped" in summary:
        print(
            f"vlx: stopped at step {summary['stopped']}; checkpoint saved in "
            f"{args.workdir}/checkpoints; run the same command to resume"
        )
        return 0
    print(
        f"finished {summary['step']} steps in {minutes}m{seconds:02d}s; "
        f"metrics in {args.workdir}/metrics.jsonl"
    )
    prefixes = tuple(f"{evals.prefix(name, e)}/" for name, e in cfg.evals.items())
    for key, value in summary.items():
        if key == "train/loss" or key.startswith(prefixes):
            print(f"  {key}: {_number(value)}")
    headlines = {  # evaluator type -> (metric, count, sentence, word for data not trained on)
        "linear_probe": (
            "accuracy",
            "num_test",
            "linear-probe accuracy on {n} {d} {held}images",
            "test ",
        ),
        "zeroshot": (
            "top1",
            "num_examples",
            "zero-shot top-1 on {n} {held}{d} images",
            "held-out ",
        ),
    }  # zero-shot comes last
    for kind, (metric, count, sentence, word) in headlines.items():
        for name, e in cfg.evals.items():
            value = summary.get(f"{evals.prefix(name, e)}/{metric}")
            if e.type == kind and value is not None:
                n = summary[f"{evals.prefix(name, e)}/{count}"]
                held = evals.held_out(cfg, e)
                line = sentence.format(n=n, d=e.dataset, held=word if held else "")
                print(f"{line}{'' if held else ' (the training data)'}: {value:.3f}")
    return 0


def _number(value) -> str:
    if not isinstance(value, float) or value != value:
        return str(value)
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"


def _eval(args, overrides: list[str]) -> int:
    from vlx.evals import standalone

    _start_processes(args)
    step, results = standalone.evaluate(
        args.workdir, args.step, overrides, save_embeddings=args.save_embeddings
    )
    print(f"step {step}")
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"  {key:<{width}}  {_number(value)}")
    print(f"written to {args.workdir}/eval/{step}.json and {args.workdir}/metrics.jsonl")
    if args.save_embeddings:
        print(f"embeddings: {args.workdir}/eval/{step}/<evaluator>.npz")
    return 0


def _export(args, overrides: list[str]) -> int:
    from vlx import export

    out = export.export(args.workdir, args.out, args.format, args.step)
    print(f"exported {args.workdir} to {out} ({args.format})")
    return 0


def _plot(args, overrides: list[str]) -> int:
    from vlx import plot

    paths = plot.plot_workdir(args.workdir, args.out)
    for path in paths:
        print(path)
    return 0


def _data_build(args, overrides: list[str]) -> int:
    from tqdm import tqdm

    from vlx.data import build

    options = build.BuildOptions(
        image_col=args.image_col,
        caption_col=args.caption_col,
        label_col=args.label_col,
        classname_col=args.classname_col,
        caption_sep=args.caption_sep,
        shard_size=args.shard_size,
        workers=args.workers,
        vocab_size=args.vocab_size,
        max_bad_fraction=args.max_bad_fraction,
    )
    with tqdm(unit="example", file=sys.stderr, mininterval=1.0) as bar:

        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        manifest = build.build(args.input, args.out, options, progress=progress)
    if manifest.get("reused"):
        print(f"{args.out} is already built from this input with these options; nothing to do")
    print(
        f"{args.out}: {manifest['num_examples']} examples, {manifest['num_captions']} captions, "
        f"{len(manifest['shards'])} shards; skipped {manifest['num_skipped']}"
        + (f" ({manifest['skipped']})" if manifest["skipped"] else "")
    )
    if manifest.get("tokenizer"):
        print(f"tokenizer: {args.out}/{manifest['tokenizer']} (use --config.data.tokenizer=...)")
    return 0


def _data_inspect(args, overrides: list[str]) -> int:
    from vlx import config
    from vlx.data import inspect, sources

    cfg = config.defaults()
    source = sources.build(args.source, split=args.split, image_size=64, data_cfg=cfg.data)
    info = inspect.summary(source, num_samples=args.num)
    for key, value in info.items():
        if key != "samples":
            print(f"{key}: {value}")
    for i, sample in enumerate(info["samples"]):
        label = f" [label {sample['label']}]" if sample["label"] >= 0 else ""
        print(f"  {i}:{label} " + " | ".join(sample["captions"]))
    path = inspect.contact_sheet(source, args.sheet, num=args.num)
    print(f"contact sheet: {path}")
    return 0


def _bench_data(args, overrides: list[str]) -> int:
    import json

    from vlx import bench, config

    cfg = config.defaults()
    result = bench.data_throughput(
        args.source,
        cfg.data,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        batches=args.batches,
        tokenizer=args.tokenizer,
    )
    print(json.dumps(result))
    return 0


def _bench_step(args, overrides: list[str]) -> int:
    import json

    from vlx import bench, config

    if not args.config:
        raise ConfigError(
            "vlx bench: give --config CFG (the train step) or a subcommand "
            "(data, loss, matmul, open_clip)"
        )
    cfg = config.load(args.config, overrides)
    if args.open_clip:
        if args.profile:
            raise ConfigError("vlx bench: --profile and --open-clip cannot be combined")
        result = bench.side_by_side(cfg, args.open_clip, steps=args.steps, warmup=args.warmup)
    else:
        result = bench.train_step_throughput(
            cfg, steps=args.steps, warmup=args.warmup, profile_dir=args.profile
        )
    print(json.dumps(result))
    return 0


def _bench_loss(args, overrides: list[str]) -> int:
    import json

    from vlx import bench

    for row in bench.loss_memory(args.batch_size, args.embed_dim):
        print(json.dumps(row))
    return 0


def _bench_matmul(args, overrides: list[str]) -> int:
    import json

    from vlx import bench

    libraries = ("default", "eigen") if args.cpu_matmul == "both" else (args.cpu_matmul,)
    runs = [("jax", library) for library in libraries] + [("torch", "")] * bool(args.torch)
    for shape in args.shapes.split(","):
        d_in, _, d_out = shape.partition("x")
        if not (d_in.isdigit() and d_out.isdigit()):
            raise ConfigError(
                f"vlx bench matmul --shapes: {shape!r} is not INxOUT; write e.g. 384x1536"
            )
        for form in bench.MATMUL_FORMS:
            for framework, library in runs:
                row = bench.matmul_throughput(
                    args.tokens,
                    int(d_in),
                    int(d_out),
                    form=form,
                    dtype=args.dtype,
                    framework=framework,
                    torch_device=args.torch or "cpu",
                    cpu_matmul=library,
                    reps=args.reps,
                )
                print(json.dumps(row))
    return 0


def _bench_open_clip(args, overrides: list[str]) -> int:
    import json

    from vlx import bench

    result = bench.open_clip_step(
        args.model,
        args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        precision=args.precision,
        compile=args.compile,
    )
    print(json.dumps(result))
    return 0


def _stop_on_signals() -> tuple[threading.Event, dict]:
    """SIGTERM or SIGINT: finish the current step, save, exit 0. A second SIGINT aborts."""
    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        print(
            "\nvlx: stopping after this step and saving a checkpoint (Ctrl-C again to abort)",
            file=sys.stderr,
        )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    return stop, previous


def _process_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "multi-process runs",
        "Only for several processes started by hand; TPU pods and SLURM jobs are detected. "
        "Also from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.",
    )
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
    g.add_argument("--num_processes", "--num-processes", type=int, default=None)
    g.add_argument("--process_id", "--process-id", type=int, default=None)
    g.add_argument(
        "--init_timeout",
        "--init-timeout",
        type=int,
        default=300,
        help="seconds to wait for every process to join (default 300)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlx", description="Train and evaluate image-text dual encoders (CLIP, SigLIP)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "train",
        help="train a model from a config",
        description="Train from a config file; override any key with --config.KEY=VALUE.",
    )
    p.add_argument("--config", required=True, help="config file, e.g. configs/demo.py[:arg]")
    p.add_argument("--workdir", required=True, help="directory for metrics, logs, checkpoints")
    _process_arguments(p)
    p.set_defaults(run=_train)

    p = sub.add_parser(
        "eval",
        help="run the configured evaluators on a checkpoint",
        description="Evaluate a checkpoint of WORKDIR with its config's evaluators; override or "
        "add evaluators with --config.evals.NAME.KEY=VALUE or --config.evals={...}.",
    )
    p.add_argument("--workdir", required=True, help="a training workdir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument(
        "--save-embeddings",
        action="store_true",
        help="also write each evaluator's embeddings and labels to WORKDIR/eval/STEP/NAME.npz",
    )
    _process_arguments(p)
    p.set_defaults(run=_eval)

    p = sub.add_parser(
        "export",
        help="write a checkpoint as a transformers or open_clip model directory",
        description="Export a checkpoint of WORKDIR for PyTorch: --format hf writes a directory "
        "that transformers' CLIPModel/SiglipModel and AutoProcessor load; --format open_clip one "
        "that open_clip loads as local-dir:OUT.",
    )
    p.add_argument("--workdir", required=True, help="a training workdir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--format", required=True, choices=("hf", "open_clip"))
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.set_defaults(run=_export)

    p = sub.add_parser(
        "plot",
        help="PNG plots of a run's training and eval curves",
        description="Plot loss, accuracies, learning rate, temperature and eval metrics "
        "against step from WORKDIR/metrics.jsonl.",
    )
    p.add_argument("--workdir", required=True, help="a training workdir")
    p.add_argument("--out", default=None, help="output directory (default: WORKDIR/plots)")
    p.set_defaults(run=_plot)

    data = sub.add_parser("data", help="build and inspect datasets").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser(
        "build",
        help="convert a CSV/TSV/JSONL of image paths + captions, or webdataset tar shards, "
        "into a vlx ArrayRecord dataset",
    )
    p.add_argument("input", help="a .csv/.tsv/.jsonl file, or a directory of .tar shards")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--image-col", default="image", help="column with image paths")
    p.add_argument("--caption-col", default="caption", help="column with captions")
    p.add_argument("--label-col", default=None, help="column with integer labels")
    p.add_argument("--classname-col", default=None, help="column with class names")
    p.add_argument("--caption-sep", default=None, help="split captions in one cell on this")
    p.add_argument("--shard-size", type=int, default=10_000, help="examples per shard")
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE tokenizer size (0: none)")
    p.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.5,
        help="fail when more examples than this are bad",
    )
    p.set_defaults(run=_data_build)

    p = data.add_parser("inspect", help="counts, sample captions and a contact sheet")
    p.add_argument("source", help="a dataset directory, or a source spec such as demo")
    p.add_argument("--split", default="train", help="split for demo/tfds sources")
    p.add_argument("--num", type=int, default=16, help="samples to show")
    p.add_argument("--sheet", default="contact_sheet.png", help="PNG to write")
    p.set_defaults(run=_data_inspect)

    p = sub.add_parser(
        "bench",
        help="benchmarks: the train step (--config), or one of data, loss, matmul, open_clip",
        description="With --config: compile and time the train step of a config on synthetic "
        "batches and print one JSON line (compile time, step time, images/s, FLOPs, MFU, peak "
        "memory). Override any key with --config.KEY=VALUE.",
    )
    p.add_argument("--config", default=None, help="config file, e.g. configs/clip_vit_b16.py")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument(
        "--profile", default=None, help="write a profiler trace of 3 steps here (TensorBoard)"
    )
    p.add_argument(
        "--open-clip",
        default=None,
        metavar="MODEL",
        help="also time open_clip's training step of MODEL (e.g. ViT-S-32) in this process, "
        "taking turns with vlx's in rounds of 3 steps; reports both and their ratio",
    )
    p.set_defaults(run=_bench_step)
    bench = p.add_subparsers(dest="bench_command", required=False)
    p = bench.add_parser("data", help="input pipeline images/s")
    p.add_argument("--source", required=True, help="dataset directory or source spec")
    p.add_argument("--workers", type=int, default=0, help="Grain worker processes")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=20, help="timed batches (after 3 warm-up)")
    p.add_argument("--tokenizer", default="demo")
    p.set_defaults(run=_bench_data)
    p = bench.add_parser("loss", help="per-device memory of the loss forms at a large batch")
    p.add_argument("--batch-size", type=int, default=16384, help="global batch")
    p.add_argument("--embed-dim", type=int, default=512)
    p.set_defaults(run=_bench_loss)
    p = bench.add_parser(
        "matmul",
        help="GFLOP/s of a dense layer's matmuls: forward (x@w) and weight gradient (x.T@y)",
    )
    p.add_argument(
        "--tokens", type=int, default=4928, help="rows (batch x sequence; 64 x 77 by default)"
    )
    p.add_argument(
        "--shapes",
        default="384x384,384x1536,1536x384",
        help="comma-separated IN x OUT layer sizes (default: a ViT-S block)",
    )
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--reps", type=int, default=20, help="timed runs per matmul (best is kept)")
    p.add_argument(
        "--cpu-matmul",
        default="both",
        choices=("both", "default", "eigen"),
        help="on a CPU, the library of JAX's matmuls, as model.cpu_matmul names it (default: "
        "time both XLA's default and Eigen)",
    )
    p.add_argument(
        "--torch",
        nargs="?",
        const="cpu",
        default=None,
        metavar="DEVICE",
        help="time PyTorch's matmuls as well, on DEVICE (cpu by default; cuda on a GPU)",
    )
    p.set_defaults(run=_bench_matmul)
    p = bench.add_parser(
        "open_clip", help="open_clip's own training step on this machine (needs torch, open_clip)"
    )
    p.add_argument("--model", default="ViT-S-32", help="an open_clip model name")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", help="a torch device: cpu, cuda")
    p.add_argument("--precision", default="fp32", choices=("fp32", "amp_bf16"))
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.set_defaults(run=_bench_open_clip)
    return parser


# Orbax warns whenever a checkpoint directory is opened read-only, which vlx does on purpose
# to resume, evaluate or export.
_READ_ONLY_NOTICES = ("Given directory is read only", "CheckpointManagerOptions.read_only=True")


def _read_only_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_READ_ONLY_NOTICES)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        env = hostenv.reexec_environment(os.environ)
        if env is not None:
            os.execve(sys.executable, sys.orig_argv, env)
        argv = sys.argv[1:]
    os.environ.update(hostenv.import_environment(os.environ))
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    args = build_parser().parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("absl", "jax._src", "orbax", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("absl").addFilter(_read_only_notice)
    try:
        return args.run(args, overrides)
    except VlxError as e:
        print(f"vlx: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
