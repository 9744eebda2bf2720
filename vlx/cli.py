"""The `vlx` command: subcommands that parse arguments and call the library."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from vlx.errors import VlxError


def _train(args, overrides: list[str]) -> int:
    from vlx import config, train
    from vlx.metrics import Progress

    cfg = config.load(args.config, overrides)
    t0 = time.perf_counter()
    summary = train.train(cfg, args.workdir, progress=Progress(cfg.total_steps))
    minutes, seconds = divmod(int(time.perf_counter() - t0), 60)
    print(
        f"finished {summary['step']} steps in {minutes}m{seconds:02d}s; "
        f"metrics in {args.workdir}/metrics.jsonl"
    )
    prefixes = tuple(f"{e.prefix or name}/" for name, e in cfg.evals.items())
    for key, value in summary.items():
        if key == "train/loss" or key.startswith(prefixes):
            print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    for name, e in cfg.evals.items():
        top1 = summary.get(f"{e.prefix or name}/top1")
        if e.type == "zeroshot" and top1 is not None:
            n = summary[f"{e.prefix or name}/num_examples"]
            print(f"zero-shot top-1 on {n} held-out {e.dataset} images: {top1:.3f}")
    return 0


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
    p.set_defaults(run=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
