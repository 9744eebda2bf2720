"""Tiny configs and `vlx` runners shared by the tests."""

import os
import subprocess
import sys
from pathlib import Path

from tests.xla import cpu_flags
from vlx import cli, config, optim, train

TINY = dict(
    seed=0,
    total_steps=4,
    batch_size=16,
    log_every=2,
    model=dict(
        image=dict(variant="mu/8", image_size=16, width=32, depth=2, mlp_dim=64, heads=2),
        text=dict(
            variant="mu", vocab_size=64, context_length=8, width=32, depth=2, mlp_dim=64, heads=2
        ),
        embed_dim=16,
    ),
    optim=dict(lr=1e-2, warmup_steps=0, weight_decay=0.1),
    data=dict(source="demo", tokenizer="demo"),
)


def tiny_config(**updates):
    """The tiny config with nested `updates` (dicts merge key by key)."""
    cfg = config.from_dict(TINY)
    config.merge(cfg, updates, where="test")
    config.validate(cfg)
    return cfg


def compiled_step(cfg, mesh):
    """(fresh train state, its compiled train step)."""
    tx, lr = optim.make(cfg.optim, cfg.total_steps)
    state = train.create_state(cfg, mesh, eos_id=2, tx=tx)
    step = train.make_train_step(cfg, mesh, state, lr)
    return state, step.lower(state.arrays, train.abstract_batch(cfg, mesh)).compile()


def cli_train(config_path, workdir, *overrides: str) -> int:
    """`vlx train --config CONFIG --workdir WORKDIR OVERRIDES...`, in this process."""
    return cli.main(["train", "--config", str(config_path), "--workdir", str(workdir), *overrides])


def run_vlx(
    *args: str, devices: int, optimize: bool = False, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`vlx ARGS...` in a new process that sees `devices` CPU devices (see `cpu_flags`)."""
    env = {**os.environ, "XLA_FLAGS": cpu_flags(devices, optimize=optimize)}
    cmd = [sys.executable, "-m", "vlx.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def never(what: str):
    """A stand-in for a function that must not run (yet): calling it fails the test."""

    def fail(*args, **kwargs):
        raise AssertionError(what)

    return fail


def with_vlx_on_path(environ: dict, *dirs: Path) -> dict:
    """`environ` with `dirs`, then this interpreter's `vlx`, first on PATH (for shell scripts)."""
    path = os.pathsep.join([*map(str, dirs), str(Path(sys.executable).parent), environ["PATH"]])
    return {**environ, "PATH": path}
