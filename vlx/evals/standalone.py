"""`vlx eval`: the configured evaluators on a saved checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from vlx import evals
from vlx.errors import ConfigError
from vlx.evals.common import EvalContext
from vlx.metrics import MetricWriter


def evaluate(
    workdir: str | Path, step: int | None = None, overrides=(), *, save_embeddings: bool = False
) -> tuple[int, dict]:
    """Runs `workdir`'s evaluators (with `overrides`) on its checkpoint of `step` (default: the
    latest); appends the results to metrics.jsonl and writes `eval/<step>.json`. With
    `save_embeddings`, each evaluator's embeddings go to `eval/<step>/<name>.npz`."""
    from vlx import train

    workdir = Path(workdir)
    run = train.open_run(workdir, step, overrides)
    cfg, step = run.cfg, run.step
    if not cfg.evals:
        raise ConfigError("no evaluators configured; add some with --config.evals={...}")
    sources = evals.open_sources(cfg)  # before the model: a wrong path fails in seconds
    trained = train.load_trained(run)
    context = EvalContext(
        cfg,
        trained.mesh,
        trained.state.graphdefs["model"],
        trained.model,
        trained.state.shardings["model"],
        trained.tokenizer,
        sources=sources,
        save_dir=workdir / "eval" / str(step) if save_embeddings else None,
    )
    results = evals.run_all(cfg, context, step, force=True)
    if jax.process_index() == 0:
        (workdir / "eval").mkdir(exist_ok=True)
        (workdir / "eval" / f"{step}.json").write_text(json.dumps(results, indent=2))
        writer = MetricWriter(workdir)
        writer.write(step, results)
        writer.close()
    return step, results
