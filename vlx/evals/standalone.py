"""`vlx eval`: the configured evaluators on a saved checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from vlx import config, evals, parallel
from vlx.checkpoint import Checkpointer
from vlx.data import tokenizer as tokenizer_lib
from vlx.errors import CheckpointError, ConfigError
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
    if not (workdir / "config.json").is_file():
        raise ConfigError(f"{workdir} has no config.json; is it a vlx workdir?")
    cfg = config.from_dict(json.loads((workdir / "config.json").read_text()))
    for item in overrides:
        config.apply_override(cfg, item)
    config.validate(cfg)
    if not cfg.evals:
        raise ConfigError("no evaluators configured; add some with --config.evals={...}")
    ckpt = Checkpointer(workdir / "checkpoints", read_only=True)
    step = ckpt.latest_step() if step is None else step
    if step is None or step not in ckpt.manager.all_steps():
        raise CheckpointError(
            f"no checkpoint of step {step} in {workdir / 'checkpoints'}; "
            f"available: {sorted(ckpt.manager.all_steps())}"
        )
    mesh = parallel.make_mesh(cfg.mesh)
    tok = tokenizer_lib.load(str(workdir / "tokenizer"), cfg.model.text.context_length)
    state = train.create_state(cfg, mesh, eos_id=tok.eos_id, tx=None)
    arrays, _ = ckpt.restore(step, state.arrays, only=("model",))
    context = EvalContext(
        cfg,
        mesh,
        state.graphdefs["model"],
        arrays["model"],
        state.shardings["model"],
        tok,
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
