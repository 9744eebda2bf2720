import json
import math
import os
import platform

import pytest

from tests.helpers import run_vlx
from vlx import bench, cli, compile_options, config


def test_bench_prints_one_json_line_and_writes_a_profile(capsys, tmp_path):
    args = ["bench", "--config", "configs/demo.py", "--steps", "2", "--warmup", "1"]
    assert cli.main([*args, "--config.batch_size=32", "--profile", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["devices"] == 8 and result["batch_size"] == 32
    assert result["step_s"] > 0 and result["images_per_s"] == pytest.approx(
        32 / result["step_s"], rel=0.01
    )
    assert result["peak_source"].startswith("measured matmul")
    assert 0 < result["mfu"] < 1
    assert result["gflops_per_step"] > 0 and result["compile_s"] > 0
    assert result["host_cpu"] == bench.host_cpu()
    widest = compile_options.widest_matmul(config.load("configs/demo.py").model)
    assert result["cpu_matmul"] == compile_options.library("auto", "cpu", widest)
    assert list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))
    assert result["trained_params"] == result["params"]

    assert cli.main([*args, "--config.batch_size=32", "--config.optim.freeze=image.*"]) == 0
    lit = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert lit["params"] == result["params"] > lit["trained_params"]
    parts, lit_parts = result["gflops_per_step_parts"], lit["gflops_per_step_parts"]
    assert lit_parts["image"] == pytest.approx(parts["image"] / 3, abs=0.1)
    assert lit_parts["text"] == parts["text"]


def test_host_cpu_names_the_model_the_usable_cores_and_the_widest_vector_unit(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx fma avx2\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx fma avx2\n"
    )
    cores = len(os.sched_getaffinity(0))
    assert bench.host_cpu(str(cpuinfo)) == f"AMD EPYC 7B13, {cores} cores, avx2"
    fallback = bench.host_cpu(str(tmp_path / "missing"))
    assert fallback == f"{platform.processor() or platform.machine()}, {cores} cores"


def test_loss_memory_per_device_never_holds_the_global_logits(capsys):
    assert cli.main(["bench", "loss", "--batch-size", "4096", "--embed-dim", "64"]) == 0
    rows = {r["loss"]: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    global_mib = rows["softmax/gather"]["global_logits_mib"]
    assert rows["softmax/gather"]["temp_mib_per_device"] < global_mib
    assert rows["sigmoid/gather"]["temp_mib_per_device"] < global_mib / 2
    # The ring keeps one [B_local, B_local] block (rematerialised in the backward pass).
    assert (
        rows["sigmoid/ring"]["temp_mib_per_device"] < rows["sigmoid/gather"]["temp_mib_per_device"]
    )


def test_open_clip_reference_step_runs(capsys):
    args = ["bench", "open_clip", "--model", "ViT-S-32", "--batch-size", "2"]
    assert cli.main([*args, "--steps", "1", "--warmup", "1", "--precision", "amp_bf16"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "ViT-S-32" and result["precision"] == "amp_bf16"
    assert result["images_per_s"] > 0 and math.isfinite(result["loss"])


def test_side_by_side_alternates_vlx_and_open_clip_on_the_same_architecture():
    """`--open-clip MODEL`: both steps timed in one process, the same number of times; the
    vlx recipe and open_clip's model have the same parameter count (like for like). In its
    own process on one device with XLA's optimisations on, as the README's command runs on a
    CPU: -O0 doubles ViT-S/32's step, and 8 simulated devices add a sharded compile."""
    args = ["bench", "--config", "configs/clip_vit_s32.py", "--steps", "2", "--warmup", "0"]
    overrides = ["--config.batch_size=8", "--config.model.dtype=float32"]
    done = run_vlx(*args, *overrides, "--open-clip", "ViT-S-32", devices=1, optimize=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    oc = result["open_clip"]
    assert result["params"] == oc["params"] == 63_085_825
    assert oc["precision"] == "fp32" and oc["batch_size"] == result["batch_size"] == 8
    assert len(result["step_s_each"]) == len(oc["step_s_each"]) == 2
    assert result["step_s"] == pytest.approx(sum(result["step_s_each"]) / 2, abs=1e-4)
    assert result["vlx_over_open_clip"] == pytest.approx(oc["step_s"] / result["step_s"], rel=1e-3)
    assert math.isfinite(result["loss"]) and math.isfinite(oc["loss"])


def test_matmul_bench_times_both_forms_in_both_frameworks(capsys):
    args = ["bench", "matmul", "--tokens", "64", "--shapes", "32x48,48x32", "--reps", "2"]
    assert cli.main([*args, "--torch"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    runs = ("jax", "default matmuls"), ("jax", "eigen matmuls"), ("torch", "threads")
    assert [(r["d_in"], r["form"], r["framework"].split()[0]) for r in rows] == [
        (d, form, fw) for d in (32, 48) for form in ("x@w", "x.T@y") for fw, _ in runs
    ]
    assert all(r["framework"].endswith(end) for r, (_, end) in zip(rows, runs * 4, strict=True))
    for r in rows:
        assert r["gflop_per_s"] == pytest.approx(
            2 * 64 * r["d_in"] * r["d_out"] / r["ms"] / 1e6, rel=0.01
        )
    assert cli.main(["bench", "matmul", "--shapes", "48"]) == 2
    assert "--shapes: '48' is not INxOUT" in capsys.readouterr().err


def test_cpu_peak_is_the_faster_librarys_so_mfu_never_credits_a_slow_gemm(monkeypatch):
    rates = {"default": 180.0, "eigen": 140.0}
    timed = []

    def fake(tokens, d_in, d_out, *, dtype, cpu_matmul, reps):
        timed.append((tokens, d_in, d_out, dtype, cpu_matmul))
        return {"gflop_per_s": rates[cpu_matmul]}

    monkeypatch.setattr(bench, "matmul_throughput", fake)
    assert bench.cpu_matmul_peak("bfloat16", n=64) == 180e9
    rates.update(eigen=190.0)
    assert bench.cpu_matmul_peak("bfloat16", n=64) == 190e9
    assert {t[-1] for t in timed} == {"default", "eigen"}
    assert {t[:4] for t in timed} == {(64, 64, 64, "bfloat16")}
