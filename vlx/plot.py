"""`vlx plot`: PNG figures of a run's curves from `metrics.jsonl`.

`training.png`: loss, in-batch accuracies, learning rate, temperature (and the sigmoid bias when
there is one), throughput and gradient norm against step. `eval.png`: one panel per evaluator
with each of its metrics against step (counts such as num_examples are left out).
"""

from __future__ import annotations

import math
from pathlib import Path

from vlx.errors import VlxError
from vlx.metrics import read_jsonl

TRAINING_PANELS = (
    ("loss", ("train/loss",), False),
    ("in-batch accuracy", ("train/i2t_acc", "train/t2i_acc"), False),
    ("learning rate", ("train/lr",), False),
    ("temperature", ("train/temperature",), True),
    ("logit bias", ("train/logit_bias",), False),
    ("gradient norm", ("train/grad_norm",), True),
    ("images/s", ("train/images_per_sec",), False),
)
NOT_EVAL = ("train/", "data/", "checkpoint/")


def series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """key -> (steps, values), sorted by step; a step logged twice keeps its last value."""
    by_key: dict[str, dict[int, float]] = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                by_key.setdefault(key, {})[record["step"]] = float(value)
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in by_key.items()}


def eval_panels(data: dict) -> list[tuple[str, tuple[str, ...], bool]]:
    """One panel per evaluator prefix with its rate-like metrics."""
    groups: dict[str, list[str]] = {}
    for key in sorted(data):
        prefix, _, metric = key.partition("/")
        if key.startswith(NOT_EVAL) or not metric or metric.startswith("num_") or metric == "l2":
            continue
        groups.setdefault(prefix, []).append(key)
    return [(prefix, tuple(keys), False) for prefix, keys in groups.items()]


def _figure(data: dict, panels, title: str, path: Path) -> Path | None:
    from matplotlib.figure import Figure

    panels = [(name, [k for k in keys if k in data], log) for name, keys, log in panels]
    panels = [p for p in panels if p[1] and not _flat_zero(data, p[1])]
    if not panels:
        return None
    last = max(max(steps) for steps, _ in data.values())
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5 * cols, 3.4 * rows), layout="constrained")
    fig.suptitle(title)
    for i, (name, keys, log) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for key in keys:
            steps, values = data[key]
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_xlim(0, last * 1.02 or 1)
        if log and all(v > 0 for k in keys for v in data[k][1]):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return path


def _flat_zero(data: dict, keys) -> bool:
    return all(v == 0 for k in keys for v in data[k][1])


def plot_workdir(workdir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Writes `training.png` and `eval.png` (when there are eval metrics); returns their paths."""
    workdir = Path(workdir)
    metrics = workdir / "metrics.jsonl"
    if not metrics.is_file():
        raise VlxError(f"{metrics} does not exist; is {workdir} a vlx workdir that has trained?")
    data = series(read_jsonl(metrics))
    out = Path(out) if out else workdir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _figure(data, TRAINING_PANELS, f"{workdir.name}: training", out / "training.png"),
        _figure(data, eval_panels(data), f"{workdir.name}: evaluation", out / "eval.png"),
    ]
    written = [p for p in written if p is not None]
    if not written:
        raise VlxError(f"{metrics} has no training or eval metrics to plot yet")
    return written
