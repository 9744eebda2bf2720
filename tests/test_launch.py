"""The launch scripts that run on this machine (`local.sh` runs in tests/test_distributed.py)."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import with_vlx_on_path
from tests.xla import cpu_flags
from vlx import config
from vlx.metrics import read_jsonl

# Stands in for SLURM's srun on one machine: FAKE_SRUN_TASKS tasks of the command, each with the
# variables SLURM gives a task (JAX reads them); SIGTERM is passed on to every task, as srun does.
FAKE_SRUN = """#!/usr/bin/env bash
[[ "${1:-}" == --kill-on-bad-exit* ]] && shift
n=${FAKE_SRUN_TASKS:-2}
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
for ((i = 0; i < n; i++)); do
  SLURM_JOB_ID=$FAKE_SRUN_JOB_ID SLURM_STEP_NODELIST=localhost SLURM_NTASKS=$n \\
    SLURM_PROCID=$i SLURM_LOCALID=$i "$@" &
  pids+=("$!")
done
status=0
for pid in "${pids[@]}"; do
  while true; do
    wait "$pid"; rc=$?
    if ((rc > 128)) && kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  ((rc != 0)) && status=$rc
done
exit "$status"
"""


# Stands in for `gcloud compute tpus tpu-vm {scp,ssh}` with one TPU worker whose home directory
# is $FAKE_TPU_HOME. The install step unpacks the archive as the script asks, then links this
# interpreter's `vlx` where the worker's virtualenv would have it (no download); every other
# command runs as the script wrote it.
FAKE_GCLOUD = """#!/usr/bin/env bash
set -euo pipefail
printf '%s\\n' "$*" >>"$FAKE_TPU_HOME/gcloud.log"
verb=$4
shift 4
if [[ $verb == scp ]]; then
  cp "$1" "$FAKE_TPU_HOME/${2#*:~/}"
  exit 0
fi
while [[ $1 != --command ]]; do shift; done
command=$2
cd "$FAKE_TPU_HOME"
if [[ $command == *"pip install"* ]]; then
  HOME=$FAKE_TPU_HOME bash -c 'mkdir -p ~/vlx && tar -C ~/vlx -xzf ~/vlx.tar.gz'
  mkdir -p vlx-venv/bin && ln -sf "$FAKE_TPU_VLX" vlx-venv/bin/vlx
else
  HOME=$FAKE_TPU_HOME bash -c "$command"
fi
"""


def test_gpu_host_script_runs_with_its_xla_flags_and_unrolled_layers(tmp_path):
    """Its GPU XLA flags must parse with the installed jaxlib (newer spellings abort older
    ones); XLA takes them on any backend, so a CPU run checks them."""
    workdir = tmp_path / "run"
    cmd = ["bash", "launch/gpu_host.sh", "--config", "configs/demo.py", "--workdir", str(workdir)]
    cmd += ["--config.total_steps=2", "--config.batch_size=16", "--config.evals={}"]
    env = with_vlx_on_path({**os.environ, "XLA_FLAGS": cpu_flags(1)})
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished 2 steps" in done.stdout
    assert json.loads((workdir / "config.json").read_text())["model"]["scan"] is False
    # A later --config.model.scan=true on the script's command line wins.
    assert config.load(
        "configs/demo.py", ["--config.model.scan=false", "--config.model.scan=true"]
    ).model.scan


def test_slurm_script_runs_every_task_and_passes_sigterm_on(tmp_path):
    """Two tasks under a stand-in srun: JAX joins them from SLURM's variables (one 8-device
    mesh), and SIGTERM to the batch script, as `--signal=B:TERM@300` sends before the time
    limit, stops both at the same step with a checkpoint and exit status 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    env = with_vlx_on_path({**os.environ, "XLA_FLAGS": cpu_flags(4)}, bin_dir)
    env["FAKE_SRUN_JOB_ID"] = str(random.randrange(1 << 20))  # picks the coordinator's port
    workdir = tmp_path / "run"
    cmd = ["bash", "launch/slurm.sbatch", "--config", "configs/demo.py", "--workdir", str(workdir)]
    cmd += ["--config.total_steps=500", "--config.log_every=1", "--config.evals={}"]
    job = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 180
    while time.time() < deadline and job.poll() is None:
        records = (
            read_jsonl(workdir / "metrics.jsonl") if (workdir / "metrics.jsonl").exists() else []
        )
        if any(r.get("step", 0) >= 2 for r in records):
            break
        time.sleep(0.5)
    job.send_signal(signal.SIGTERM)
    out, _ = job.communicate(timeout=180)
    assert job.returncode == 0, out[-3000:]
    assert "mesh {'data': 8" in out
    # Both tasks, at the same step. The tasks share the pipe, so one's message may land in the
    # middle of the other's line: count the messages, not the lines.
    stopped = re.findall(r"vlx: stopped at step (\d+);", out)
    assert len(stopped) == 2, out[-3000:]
    assert len(set(stopped)) == 1 and (workdir / "checkpoints" / stopped[0]).is_dir()


def test_tpu_pod_script_ships_the_working_tree_and_quotes_the_command(tmp_path):
    """Through a stand-in gcloud with one worker: the archive holds the project but nothing git
    ignores (this checkout's __pycache__/), and an override with spaces and quotes arrives
    intact (the evaluator it adds runs on 60 examples)."""
    bin_dir, home = tmp_path / "bin", tmp_path / "worker"
    bin_dir.mkdir()
    home.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    env = with_vlx_on_path({**os.environ, "XLA_FLAGS": cpu_flags(1)}, bin_dir)
    env.update(FAKE_TPU_HOME=str(home), FAKE_TPU_VLX=str(Path(sys.executable).parent / "vlx"))
    workdir = tmp_path / "run"
    cmd = ["bash", "launch/tpu_pod.sh", "my-tpu", "us-west4-a", "--", "--config", "configs/demo.py"]
    cmd += ["--workdir", str(workdir), "--config.total_steps=2", "--config.batch_size=16"]
    cmd += ["--config.evals={'zs': {'type': 'zeroshot', 'num_examples': 60, 'every_steps': 0}}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shipped = subprocess.run(
        ["tar", "-tzf", str(home / "vlx.tar.gz")], capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"pyproject.toml", "vlx/cli.py", "configs/demo.py", "launch/tpu_pod.sh"} <= set(shipped)
    assert not [name for name in shipped if "__pycache__" in name or name.startswith(".git/")]
    assert "--worker=all" in (home / "gcloud.log").read_text()
    final = [r for r in read_jsonl(workdir / "metrics.jsonl") if "zs/top1" in r]
    assert [(r["step"], r["zs/num_examples"]) for r in final] == [(2, 60)]
