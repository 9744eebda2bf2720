"""The launch scripts that run on this machine (`local.sh` runs in tests/test_distributed.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.xla import cpu_flags
from vlx import config


def test_gpu_host_script_runs_with_its_xla_flags_and_unrolled_layers(tmp_path):
    """Its GPU XLA flags must parse with the installed jaxlib (newer spellings abort older
    ones); XLA takes them on any backend, so a CPU run checks them."""
    workdir = tmp_path / "run"
    cmd = ["bash", "launch/gpu_host.sh", "--config", "configs/demo.py", "--workdir", str(workdir)]
    cmd += ["--config.total_steps=2", "--config.batch_size=16", "--config.evals={}"]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # its `vlx`
    env = {**os.environ, "XLA_FLAGS": cpu_flags(1), "PATH": path}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished 2 steps" in done.stdout
    assert json.loads((workdir / "config.json").read_text())["model"]["scan"] is False
    # A later --config.model.scan=true on the script's command line wins.
    assert config.load(
        "configs/demo.py", ["--config.model.scan=false", "--config.model.scan=true"]
    ).model.scan
