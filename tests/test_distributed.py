"""Real multi-process runs: 2 processes x 4 CPU devices on 127.0.0.1, gloo collectives."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import with_vlx_on_path
from tests.xla import cpu_flags
from vlx import checkpoint, cli
from vlx.export import params
from vlx.metrics import read_jsonl

DEMO = [
    "--config",
    "configs/demo.py",
    "--config.log_every=1",
    "--config.checkpoint.every_steps=3",
    "--config.evals={'zs': {'type': 'zeroshot', 'num_examples': 60}}",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(workdir, *args, processes: int = 2, devices: int = 4, timeout: int = 60):
    """`vlx train` in `processes` processes with `devices` CPU devices each."""
    env = {
        **os.environ,
        "XLA_FLAGS": cpu_flags(devices),
        "JAX_PLATFORMS": "cpu",
    }
    port = free_port()
    procs = []
    for i in range(processes):
        cmd = [sys.executable, "-m", "vlx.cli", "train", "--workdir", str(workdir), *DEMO, *args]
        if processes > 1:
            cmd += ["--coordinator", f"127.0.0.1:{port}", "--num_processes", str(processes)]
            cmd += ["--process_id", str(i), "--init_timeout", str(timeout)]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    return procs


def finish(procs, timeout: int = 300) -> list[tuple[int, str]]:
    return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]


def losses(workdir) -> dict[int, float]:
    return {
        r["step"]: r["train/loss"]
        for r in read_jsonl(workdir / "metrics.jsonl")
        if "train/loss" in r
    }


def test_two_processes_match_one_resume_unrolled_and_start_lit_from_it(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    ((code, out),) = finish(start(one, "--config.total_steps=6", processes=1, devices=8))
    assert code == 0, out
    results = finish(start(two, "--config.total_steps=6"))
    assert [c for c, _ in results] == [0, 0], results
    assert "finished 6 steps" in results[0][1]
    reference, multi = losses(one), losses(two)
    assert sorted(multi) == [1, 2, 3, 4, 5, 6]
    for step, loss in reference.items():
        assert multi[step] == pytest.approx(loss, rel=1e-5), step
    # The evaluator gathered every example exactly once across the two processes.
    final = {r["step"]: r for r in read_jsonl(two / "metrics.jsonl") if "zs/top1" in r}[6]
    ref = {r["step"]: r for r in read_jsonl(one / "metrics.jsonl") if "zs/top1" in r}[6]
    assert final["zs/num_examples"] == 60 and final["zs/top1"] == ref["zs/top1"]

    # A crash after step 3's checkpoint: the last one is lost; the same run, started this time
    # with launch/local.sh, unrolled layers and the parameters sharded over both processes
    # (fsdp=8), resumes: each process reads its part of the scanned checkpoint and the devices
    # convert it.
    shutil.rmtree(two / "checkpoints" / "6")
    logs = tmp_path / "logs"
    cmd = ["bash", "launch/local.sh", "-n", "2", "-d", "4", "-p", str(free_port()), "--"]
    cmd += ["--workdir", str(two), *DEMO, "--config.total_steps=6", "--config.model.scan=false"]
    cmd += ["--config.mesh.data=1", "--config.mesh.fsdp=8"]
    env = with_vlx_on_path({**os.environ, "XLA_FLAGS": cpu_flags(4), "LOG_DIR": str(logs)})
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "resuming from the checkpoint of step 3" in done.stdout + done.stderr
    assert "stores its layers the other way" in done.stdout + done.stderr
    assert "mesh {'data': 1, 'fsdp': 8, 'tensor': 1}" in done.stdout + done.stderr
    assert (logs / "process_1.log").is_file()
    resumed = losses(two)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(multi[step], rel=1e-6), step

    # LiT from the one-process run's image tower exported to transformers (safetensors, no
    # PyTorch needed), into unrolled layers sharded over both processes (fsdp=8): every process
    # reads the file and places its own shards.
    exported, lit = tmp_path / "hf", tmp_path / "lit"
    assert (
        cli.main(["export", "--workdir", str(one), "--format", "hf", "--out", str(exported)]) == 0
    )
    args = [f"--config.init_from=hf:{exported}#image", "--config.optim.freeze=image.*"]
    args += ["--config.model.scan=false", "--config.mesh.data=1", "--config.mesh.fsdp=8"]
    results = finish(start(lit, "--config.total_steps=2", "--config.evals={}", *args))
    assert [c for c, _ in results] == [0, 0], results
    assert f"initialised image from {exported}" in results[0][1]
    source, started = (final_model(run) for run in (one, lit))
    image = [k for k in source if k.startswith("image.")]
    assert image and sorted(image) == sorted(k for k in started if k.startswith("image."))
    for key in image:
        np.testing.assert_array_equal(started[key], source[key], err_msg=key)


def final_model(workdir) -> dict[str, np.ndarray]:
    """The model at the last checkpoint of `workdir`, one array per layer."""
    ckpt, step = checkpoint.find(workdir)
    return params.flatten(ckpt.load_arrays(step, only=("model",))["model"])


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
    workdir = tmp_path / "run"
    procs = start(workdir, "--config.total_steps=200", "--config.evals={}")
    deadline = time.time() + 120
    while time.time() < deadline:
        if (workdir / "metrics.jsonl").exists() and max(losses(workdir) or [0]) >= 2:
            break
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    results = finish(procs, timeout=120)
    assert [c for c, _ in results] == [0, 0], results
    stopped = [line for line in results[0][1].splitlines() if "stopped at step" in line]
    assert stopped, results[0][1]
    step = int(stopped[0].split("stopped at step ")[1].split(";")[0])
    assert step < 200 and (workdir / "checkpoints" / str(step)).is_dir()


def test_unreachable_coordinator_fails_in_bounded_time(tmp_path):
    port = free_port()  # nobody listens here
    env = {**os.environ, "XLA_FLAGS": cpu_flags(4)}
    cmd = [sys.executable, "-m", "vlx.cli", "train", "--workdir", str(tmp_path), *DEMO]
    cmd += ["--coordinator", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", "1"]
    cmd += ["--init_timeout", "5"]
    t0 = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "could not join the multi-process run at 127.0.0.1" in done.stderr.splitlines()[-1]
    assert time.time() - t0 < 90


def test_mesh_that_does_not_fit_the_global_devices_fails_on_every_process(tmp_path):
    results = finish(start(tmp_path / "run", "--config.mesh.fsdp=3"), timeout=120)
    for code, out in results:
        assert code == 2
        assert "does not divide the 8 devices" in out.strip().splitlines()[-1]
