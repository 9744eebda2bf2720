"""Where training and eval metrics go: `WORKDIR/metrics.jsonl`, TensorBoard, a progress bar.

Only process 0 writes. Each JSONL line is one logged step: `{"step": 100, "train/loss": ...}`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import jax
import numpy as np


def _plain(value):
    value = np.asarray(value).item() if np.ndim(value) == 0 else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def peak_memory_gb() -> float | None:
    """The largest peak memory of this process's devices in GiB, where the backend reports it
    (GPUs and TPUs; not CPUs)."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    peaks = [p for p in peaks if p]
    return max(peaks) / 2**30 if peaks else None


def _summary_writer(logdir: Path):
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX imports torch whenever it is installed, to accept torch tensors: 3.5 s at the
    start of every run on a 2-core CPU. vlx logs plain floats, so torch is hidden from that
    import (a `None` entry in `sys.modules` makes `import torch` fail) unless already loaded."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter(str(logdir))


class MetricWriter:
    """Appends metrics to `metrics.jsonl` and TensorBoard event files in `workdir`."""

    def __init__(self, workdir: str | Path, truncate_after: int | None = None):
        """`truncate_after=N` first drops records of steps after N: a run resumed from the
        checkpoint of step N rewrites them, so the file reads as one uninterrupted run."""
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.enabled and truncate_after is not None and self.path.exists():
            kept = [r for r in read_jsonl(self.path) if r["step"] <= truncate_after]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            tmp.replace(self.path)
        if self.enabled:
            self._tb = _summary_writer(Path(workdir) / "tensorboard")
            self._file = open(self.path, "a")  # noqa: SIM115 (lives as long as the writer)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a metrics file; a line cut short (a process killed mid-write) is dropped."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


# What the progress bar shows, by the metric's last name part; `wait_fraction` is the share of
# time the loop waited for the input pipeline (open_clip's log shows the same as "Data (t)").
SHOWN = (
    "train/loss",
    "train/i2t_acc",
    "train/images_per_sec",
    "train/mfu",
    "data/wait_fraction",
)


class Progress:
    """Console progress: a tqdm bar with step, loss, images/s, MFU, data wait and ETA (process
    0 only).

    The bar appears at the first step, so errors raised while setting up stay on one line.
    """

    def __init__(self, total: int, enabled: bool | None = None):
        self.total = total
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.bar = None

    def update(self, step: int, metrics: dict | None = None) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=step - 1,
                unit="step",
                dynamic_ncols=True,
                disable=not self.enabled,
                file=sys.stderr,
                mininterval=1.0,
            )
        self.bar.update(step - self.bar.n)
        if metrics:
            shown = {}
            for key in SHOWN:
                if key in metrics:
                    shown[key.split("/")[-1]] = f"{float(metrics[key]):.4g}"
            self.bar.set_postfix(shown, refresh=False)

    def write(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar else print)(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class NullProgress:
    def update(self, step: int, metrics: dict | None = None) -> None:
        pass

    def write(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass
