"""`vlx export`: a checkpoint as a PyTorch model directory (transformers or open_clip).

The directory is written under a temporary name beside `out` and renamed into place when
complete, so an export that fails (an architecture the format cannot hold, a full disk) leaves
nothing half-written behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax
from flax import nnx

from vlx.errors import ExportError
from vlx.export import hf, open_clip, params

FORMATS = {"hf": hf, "open_clip": open_clip}


def export(workdir: str | Path, out: str | Path, fmt: str, step: int | None = None) -> Path:
    """Writes `workdir`'s checkpoint `step` (default: the latest) to `out` in format `fmt`."""
    from vlx import train

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty; choose another --out or remove it")
    run = train.open_run(workdir, step)
    FORMATS[fmt].check(run.cfg.model, run.tokenizer)  # before restoring the model
    trained = train.load_trained(run)
    flat = params.flatten(nnx.to_pure_dict(jax.device_get(trained.model)))
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        FORMATS[fmt].write(tmp, trained.cfg, flat, trained.tokenizer)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
