"""Evaluators configured under `config.evals.<name>` and run during and after training.

Each evaluator module has `prepare(eval_cfg, sources, *, name)`, which opens its datasets and
checks the settings that depend on them, and `run(eval_cfg, context, *, name, prefix)`.
"""

from __future__ import annotations

from vlx.evals import linear_probe, retrieval, zeroshot
from vlx.evals.common import EvalSources

EVALUATORS = {
    "zeroshot": zeroshot,
    "retrieval": retrieval,
    "linear_probe": linear_probe,
}


def prefix(name: str, eval_cfg) -> str:
    """The metric-name prefix of evaluator `name`: its `prefix`, or else its name."""
    return eval_cfg.prefix or name


def held_out(cfg, eval_cfg) -> bool:
    """Whether evaluator `eval_cfg` reads data that `cfg` does not train on (a test split, or
    another dataset)."""
    from vlx.data import sources

    trained = {sources.identity(s, "train") for s, _ in sources.parse_mixture(cfg.data.source)}
    return sources.identity(eval_cfg.dataset, eval_cfg.split) not in trained


def due(eval_cfg, step: int, total_steps: int) -> bool:
    every = eval_cfg.every_steps
    return step == total_steps or (every > 0 and step % every == 0)


def open_sources(cfg) -> EvalSources:
    """Every evaluator's datasets, opened and checked against its settings (class names)."""
    sources = EvalSources(cfg)
    for name, eval_cfg in cfg.evals.items():
        EVALUATORS[eval_cfg.type].prepare(eval_cfg, sources, name=name)
    return sources


def run_all(cfg, context, step: int, *, force: bool = False) -> dict[str, float]:
    """Runs every evaluator due at `step` (all of them when `force`); merged metrics."""
    results: dict[str, float] = {}
    for name, eval_cfg in cfg.evals.items():
        if force or due(eval_cfg, step, cfg.total_steps):
            results.update(
                EVALUATORS[eval_cfg.type].run(
                    eval_cfg, context, name=name, prefix=prefix(name, eval_cfg)
                )
            )
    return results
