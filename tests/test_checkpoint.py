import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers import never, tiny_config
from tests.xla import cpu_flags
from vlx import checkpoint, optim, parallel, train
from vlx import config as vlx_config
from vlx.errors import CheckpointError, TrainingError
from vlx.export import imports, params


def config(**updates):
    base = dict(total_steps=8, log_every=1, checkpoint=dict(every_steps=3), evals={})
    for key, value in updates.items():
        base[key] = value if not isinstance(value, dict) else {**base.get(key, {}), **value}
    return tiny_config(**base)


def losses(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["train/loss"]) for r in map(json.loads, lines) if "train/loss" in r]


def final_params(workdir):
    mngr, step = checkpoint.find(workdir)
    return step, mngr.load_arrays(step)["model"]


class StopAt:
    """Stands in for the signal handler's Event: set once `step` steps have run."""

    def __init__(self, step):
        self.step, self.calls = step, 0

    def is_set(self):
        self.calls += 1
        return self.calls >= self.step


def test_stopped_and_resumed_run_equals_uninterrupted_run_bitwise(tmp_path, monkeypatch):
    cfg = config()
    train.train(cfg, tmp_path / "a")
    summary = train.train(cfg, tmp_path / "b", stop=StopAt(4))
    assert summary["stopped"] == 4
    assert [s for s, _ in losses(tmp_path / "b")] == [1, 2, 3, 4]
    created = []

    def create_state(*args, **kwargs):
        state = build(*args, **kwargs)
        created.append(jax.tree.leaves(state.arrays))
        return state

    build = train.create_state
    monkeypatch.setattr(train, "create_state", create_state)
    train.train(cfg, tmp_path / "b")  # resumes from step 4
    # The resume never initialised a model: its state was shapes until the checkpoint filled it.
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in created[0]) and created[0]
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # exact, including data order
    (sa, pa), (sb, pb) = final_params(tmp_path / "a"), final_params(tmp_path / "b")
    assert sa == sb == 8
    jax.tree.map(np.testing.assert_array_equal, pa, pb)


def test_checkpoint_restores_onto_another_mesh(tmp_path):
    """Written with parameters sharded over fsdp=8, continued with data=8 (replicated).

    lr 1e-3: Adam turns float noise in zero-gradient parameters into lr * noise / eps, and
    the two meshes reduce in different orders."""
    fsdp = config(total_steps=5, mesh=dict(data=1, fsdp=8), optim=dict(lr=1e-3))
    data = config(total_steps=5, mesh=dict(data=8, fsdp=1), optim=dict(lr=1e-3))
    assert train.train(fsdp, tmp_path / "run", stop=StopAt(3))["stopped"] == 3
    assert train.train(data, tmp_path / "run")["step"] == 5
    assert [s for s, _ in losses(tmp_path / "run")] == [1, 2, 3, 4, 5]
    train.train(data, tmp_path / "ref")
    np.testing.assert_allclose(
        [v for _, v in losses(tmp_path / "run")],
        [v for _, v in losses(tmp_path / "ref")],
        rtol=1e-5,
    )


def test_other_model_is_refused_by_name(tmp_path):
    train.train(config(total_steps=2), tmp_path / "run")
    wider = config(total_steps=4, model=dict(text=dict(width=48)))
    with pytest.raises(CheckpointError, match=r"model\.text\.width: checkpoint 32 vs config 48"):
        train.train(wider, tmp_path / "run")


def test_init_from_loads_weights_only_and_starts_at_step_zero(tmp_path):
    train.train(config(total_steps=3), tmp_path / "pre")
    cfg = config(total_steps=1, init_from=str(tmp_path / "pre"), optim=dict(lr=0.0))
    train.train(cfg, tmp_path / "ft")
    (s_pre, pre), (s_ft, ft) = final_params(tmp_path / "pre"), final_params(tmp_path / "ft")
    assert (s_pre, s_ft) == (3, 1)
    jax.tree.map(np.testing.assert_array_equal, pre, ft)  # lr 0: the weights are the loaded ones
    mismatched = config(total_steps=1, init_from=str(tmp_path / "pre"), model=dict(embed_dim=8))
    with pytest.raises(CheckpointError, match=r"does not match the model and optimizer .*proj"):
        train.train(mismatched, tmp_path / "ft2")

    # LiT: the image tower alone (`#image`, its config taken from the checkpoint), unrolled,
    # frozen (`optim.freeze`), with a new text tower. It stays as loaded, bit for bit, through a
    # resume, which takes the derived config from the run itself (the source may be gone);
    # only what is trained has optimizer state; resuming with another freeze is refused (the
    # optimizer state would not fit).
    new_text = dict(scan=False, image=dict(depth=1), text=dict(depth=1))
    lit = dict(init_from=f"{tmp_path / 'pre'}#image", model=new_text)
    run = tmp_path / "lit"
    train.train(config(total_steps=3, optim=dict(freeze="image.*"), **lit), run)
    with pytest.raises(CheckpointError, match="optim.freeze: checkpoint 'image.*' vs config ''"):
        train.train(config(total_steps=6, **lit), run)
    (tmp_path / "pre").rename(tmp_path / "gone")
    assert train.train(config(total_steps=5, optim=dict(freeze="image.*"), **lit), run)["step"] == 5
    (tmp_path / "gone").rename(tmp_path / "pre")
    saved = json.loads((run / "config.json").read_text())["model"]
    assert (saved["image"]["depth"], saved["text"]["depth"]) == (2, 1)
    step, after = final_params(run)
    loaded, kept = params.flatten(after), params.flatten(pre)  # per layer: unrolled vs scanned
    image = sorted(k for k in kept if k.startswith("image."))
    assert image == sorted(k for k in loaded if k.startswith("image."))
    for key in image:
        np.testing.assert_array_equal(loaded[key], kept[key], err_msg=key)
    assert "1" not in after["text"]["encoder"]["blocks"]
    moments = checkpoint.find(run)[0].load_arrays(step)["opt"]["opt_state"]["1"]["0"]["mu"]
    assert sorted(moments) == ["logit_scale", "text"]
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    frozen = sum(kept[k].size for k in image)
    assert first["train/num_params"] - first["train/num_trained_params"] == frozen

    # `#text` brings the text tower's config and the tokenizer it was trained with.
    text_only = config(init_from=f"{tmp_path / 'pre'}#text", model=dict(text=dict(width=48)))
    imports.derive_config(text_only)
    assert text_only.model.text.width == 32
    assert text_only.data.tokenizer == str(tmp_path / "pre" / "tokenizer")


def test_resuming_another_model_is_refused_before_anything_is_built_or_written(
    tmp_path, monkeypatch
):
    run = tmp_path / "run"
    finished = train.train(config(total_steps=3), run)
    saved = (run / "config.json").read_text()
    build_model = train.create_state
    monkeypatch.setattr(train, "create_state", never("built before the checkpoint was checked"))
    # The same command once more: the finished run's summary, nothing rebuilt or overwritten.
    assert train.train(config(total_steps=3), run) == finished
    assert json.loads((run / "summary.json").read_text()) == finished and "train/loss" in finished
    other = config(total_steps=6, model=dict(embed_dim=8, image=dict(depth=1)))
    with pytest.raises(CheckpointError) as e:
        train.train(other, run)
    assert str(e.value) == (
        f"{run / 'checkpoints' / '3'} was written for a different model: "
        "model.embed_dim: checkpoint 16 vs config 8; model.image.depth: checkpoint 2 vs config 1"
        ". Use another --workdir, or --config.init_from to start from its weights"
    )
    assert (run / "config.json").read_text() == saved  # the run's own config is kept
    with pytest.raises(CheckpointError, match="no complete checkpoint found at"):
        train.train(config(init_from=str(tmp_path / "nope")), tmp_path / "ft")

    # How the model runs may change: more remat, bfloat16 compute, patch dropout, no scan; so
    # may clipping and learning-rate multipliers (the optimizer state keeps its layout).
    monkeypatch.setattr(train, "create_state", build_model)
    runtime = dict(remat="full", dtype="bfloat16", scan=False, image=dict(patch_dropout=0.5))
    optimizer = dict(grad_clip=0.0, lr_mults=(("image.*", 0.5),))
    summary = train.train(config(total_steps=4, model=runtime, optim=optimizer), run)
    assert summary["step"] == 4 and losses(run)[-1][0] == 4


def test_scanned_checkpoints_restore_into_unrolled_layers_and_back(tmp_path):
    """`model.scan` stacks each encoder weight over layers; a checkpoint restores either way,
    model and optimizer state, value for value, into the new model's shardings (here from
    replicated parameters onto parameters sharded over fsdp=4: each process reads its shards
    in the stored layout and the devices convert them)."""

    def state(scan: bool, seed: int):
        mesh = dict(data=2, fsdp=4) if seed == 0 else dict(data=8, fsdp=1)
        cfg = config(seed=seed, model=dict(scan=scan), mesh=mesh)
        tx = optim.make(cfg.optim, cfg.total_steps)[0]
        return cfg, train.create_state(cfg, parallel.make_mesh(cfg.mesh), eos_id=1, tx=tx)

    for scan in (True, False):
        cfg, written = state(scan, seed=1)
        arrays = jax.tree.map(lambda x: x + 1, written.arrays)  # optimizer moments not all 0
        ckpt = checkpoint.Checkpointer(tmp_path / f"scan_{scan}", cfg.checkpoint)
        ckpt.save(5, arrays, {"counts": {"skipped": 0}}, cfg)
        ckpt.wait()
        saved = {k: params.flatten(jax.device_get(nnx.to_pure_dict(v))) for k, v in arrays.items()}

        _, target = state(not scan, seed=0)
        restored, data = ckpt.restore(5, target.arrays)
        assert data == {"counts": {"skipped": 0}}
        for name in ("model", "opt"):
            pure = nnx.to_pure_dict(restored[name])
            got = params.flatten(jax.device_get(pure))
            assert got.keys() == saved[name].keys() and any(".blocks.1." in k for k in got)
            for key, value in saved[name].items():
                np.testing.assert_array_equal(got[key], value, err_msg=key)
            shardings = nnx.to_pure_dict(target.shardings[name])
            jax.tree.map(lambda x, s: assert_sharding(x, s), pure, shardings)
        # init_from: the model alone, the rest kept as given.
        model_only, _ = ckpt.restore(5, target.arrays, only=("model",))
        assert model_only["opt"] is target.arrays["opt"]
        got = params.flatten(jax.device_get(nnx.to_pure_dict(model_only["model"])))
        assert all(np.array_equal(got[k], v) for k, v in saved["model"].items())
        ckpt.close()


def assert_sharding(x, sharding):
    assert x.sharding.is_equivalent_to(sharding, x.ndim), (x.sharding, sharding)


def test_nonfinite_loss_stops_or_is_skipped(tmp_path):
    assert train.train(config(), tmp_path / "run", stop=StopAt(3))["stopped"] == 3
    blowup = config(optim=dict(lr=1e30))  # resumed with a fatal learning rate
    with pytest.raises(
        TrainingError,
        match=r"loss is not finite at step \d; the last good "
        r"checkpoint is step 3 in .*skip_nonfinite",
    ):
        train.train(blowup, tmp_path / "run")
    poisoned = config(
        total_steps=4, log_every=3, skip_nonfinite=True, model=dict(logit_scale_init=np.nan)
    )
    summary = train.train(poisoned, tmp_path / "skip")
    # Every update skipped and counted, also those between logged steps (3 and 4).
    assert summary["train/skipped_updates"] == 4


def run_cli(workdir, steps, env=None):
    """`vlx train` of the demo in a process of its own (stdout and stderr captured)."""
    args = [
        "train",
        "--config",
        "configs/demo.py",
        "--workdir",
        str(workdir),
        f"--config.total_steps={steps}",
        "--config.log_every=1",
        "--config.checkpoint.every_steps=4",
        "--config.evals={}",
        "--config.batch_size=32",
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "vlx.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_step(workdir, step, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        path = workdir / "metrics.jsonl"
        if path.exists() and any(s >= step for s, _ in losses(workdir)):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"step {step} never came")


def test_sigterm_then_sigkill_then_resume_matches_uninterrupted(tmp_path):
    steps = 24
    ref = run_cli(tmp_path / "ref", steps)
    assert ref.wait(timeout=300) == 0, ref.communicate()

    run = tmp_path / "run"
    proc = run_cli(run, steps)
    wait_for_step(run, 6, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped at step" in out and "run the same command to resume" in out

    proc = run_cli(run, steps)
    wait_for_step(run, 14, proc)
    os.kill(proc.pid, signal.SIGKILL)  # whatever it was doing, a save included
    proc.wait()

    proc = run_cli(run, steps)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert losses(run) == losses(tmp_path / "ref")
    (s1, p1), (s2, p2) = final_params(run), final_params(tmp_path / "ref")
    assert s1 == s2 == steps
    jax.tree.map(np.testing.assert_array_equal, p1, p2)


def test_interrupted_save_never_hides_the_last_good_checkpoint(tmp_path):
    """What `kill -9` during a save leaves: Orbax's temporary directory, never renamed."""
    cfg = config(total_steps=8)
    train.train(cfg, tmp_path / "run", stop=StopAt(3))
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # a line cut short by the kill
    partial = tmp_path / "run" / "checkpoints" / "6.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00" * 100)
    mngr, step = checkpoint.find(tmp_path / "run")
    assert step == 3
    train.train(cfg, tmp_path / "run")
    train.train(cfg, tmp_path / "ref")
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")


def test_saving_small_replicated_arrays_compiles_nothing(tmp_path):
    """Orbax's replica-parallel save would slice each array into 8 on-device pieces, compiling a
    program per distinct slice (11 s at the demo's first save); small arrays are saved whole."""
    mesh = jax.make_mesh((8,), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    weights = {"w": jnp.ones((128, 256)), "b": jnp.ones((128,))}
    arrays = {"model": nnx.State(jax.device_put(weights, replicated))}
    compiles = []

    def count(name, _secs, **_):
        if name.endswith("backend_compile_duration"):
            compiles.append(name)

    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        cfg = vlx_config.defaults()
        saver = checkpoint.Checkpointer(tmp_path, cfg.checkpoint)
        saver.save(1, arrays, {"iterator": None}, cfg)
        saver.close()
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert compiles == []
    restored, _ = checkpoint.Checkpointer(tmp_path, read_only=True).restore(1, arrays)
    jax.tree.map(np.testing.assert_array_equal, restored["model"], arrays["model"])


def test_keeps_the_last_n_and_every_mth_forever(tmp_path):
    cfg = config(total_steps=8, checkpoint=dict(every_steps=1, keep=2, keep_every=4))
    train.train(cfg, tmp_path / "run")
    mngr, _ = checkpoint.find(tmp_path / "run")
    assert sorted(mngr.manager.all_steps()) == [4, 7, 8]
    blocked = [
        r
        for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if "checkpoint/blocking_sec" in r
    ]
    assert len(blocked) == 8 and all(r["checkpoint/blocking_sec"] < 30 for r in blocked)


def test_eight_device_checkpoint_continues_on_four_devices(tmp_path):
    run = tmp_path / "run"
    assert run_cli(run, 4).wait(timeout=300) == 0  # 8 devices (the tests' default)
    env = {**os.environ, "XLA_FLAGS": cpu_flags(4)}
    proc = run_cli(run, 8, env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "resuming from the checkpoint of step 4" in err
    assert [s for s, _ in losses(run)] == list(range(1, 9))
