import json
import types

import jax
import numpy as np
import pytest
from flax import nnx

from tests.export.helpers import zero_shot_predictions_agree
from tests.helpers import cli_train, compiled_step, run_vlx, tiny_config
from vlx import cli, compile_options, config, flops, optim, parallel, train
from vlx.data import demo, pipeline
from vlx.data.tokenizer import load as load_tokenizer
from vlx.export.params import flatten


def demo_batch(cfg, n, offset=0):
    src = demo.DemoSource(image_size=cfg.model.image.image_size)
    examples = [src[offset + i] for i in range(n)]
    tokens, _ = load_tokenizer("demo", cfg.model.text.context_length)(
        [e["captions"][0] for e in examples]
    )
    return {"image": np.stack([e["image"] for e in examples]), "tokens": tokens}


def params_of(arrays):
    return jax.device_get(nnx.to_pure_dict(nnx.state(arrays["model"], nnx.Param)))


def run_steps(cfg, mesh, batches):
    state, step = compiled_step(cfg, mesh)
    arrays, losses = state.arrays, []
    for batch in batches:
        arrays, metrics = step(arrays, parallel.global_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    return losses, params_of(arrays)


@pytest.mark.parametrize(
    "shape,loss",
    [
        ((8, 1, 1), "softmax"),
        ((2, 4, 1), "softmax"),
        ((2, 2, 2), "softmax"),
        ((2, 2, 2), "sigmoid"),
        ((4, 2, 1), "sigmoid-ring"),
    ],
)
def test_sharded_steps_equal_single_device_steps(shape, loss):
    kind, _, impl = loss.partition("-")
    # lr 1e-3: the attention key bias has an exactly-zero true gradient (softmax ignores it), and
    # Adam's first step turns its float noise (~1e-9) into an update of lr * noise / eps.
    cfg = tiny_config(
        optim=dict(lr=1e-3),
        loss=dict(type=kind, impl=impl or "gather"),
        model=dict(logit_bias_init=-10.0 if kind == "sigmoid" else None),
    )
    batches = [demo_batch(cfg, 16, offset=16 * i) for i in range(2)]
    one = parallel.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    many = parallel.make_mesh(dict(zip(parallel.AXES, shape, strict=True)))
    ref_losses, ref_params = run_steps(cfg, one, batches)
    losses, params = run_steps(cfg, many, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params, ref_params)
    assert ref_losses[1] != ref_losses[0]  # the first step really updated the model


def test_adamw_decays_only_kernels_and_clamps_scale():
    cfg = tiny_config(model=dict(logit_scale_init=10.0))  # above log(100): clamped on update
    mesh = parallel.make_mesh(dict(data=8, fsdp=1, tensor=1))
    tx, lr = optim.make(cfg.optim, cfg.total_steps)
    state = train.create_state(cfg, mesh, eos_id=2, tx=tx)
    mask = optim.decay_mask(nnx.state(state.arrays["model"], nnx.Param))
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert any(v for k, v in flat.items() if "fc1']['kernel" in k)
    assert not any(v for k, v in flat.items() if "bias" in k or "embedding" in k or "scale" in k)
    step = train.make_train_step(cfg, mesh, state, lr)
    arrays, metrics = step(state.arrays, parallel.global_batch(demo_batch(cfg, 16), mesh))
    assert float(metrics["logit_scale"]) == pytest.approx(100.0)
    assert float(arrays["model"]["logit_scale"][...]) == pytest.approx(np.log(100.0))


def test_demo_trains_from_the_cli(tmp_path):
    """A shortened demo: the loss falls and held-out zero-shot top-1 reaches 0.9 (0.93 here).

    On one CPU device, as the README's demo command runs on a laptop: 8 simulated devices on a
    2-core machine take up to twice as long per step, and sharding is tested elsewhere."""
    workdir = tmp_path / "demo"
    done = run_vlx(
        "train",
        "--config",
        "configs/demo.py",
        "--workdir",
        str(workdir),
        "--config.total_steps=300",
        "--config.log_every=50",
        "--config.evals.zeroshot.every_steps=0",
        "--config.evals.zeroshot.num_examples=480",
        devices=1,
        optimize=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "zeroshot/top1:" in done.stdout
    assert "zero-shot top-1 on 480 held-out demo images:" in done.stdout
    widest = compile_options.widest_matmul(config.load("configs/demo.py").model)
    assert f"({compile_options.library('auto', 'cpu', widest)} matmuls)" in done.stderr
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert [r["step"] for r in records if "train/loss" in r] == [50, 100, 150, 200, 250, 300]
    assert losses[-1] < losses[0] - 0.5
    final = next(r for r in records if "zeroshot/top1" in r)
    assert final["zeroshot/num_examples"] == 480
    assert final["zeroshot/top1"] >= 0.9  # chance is 1/24; the full demo reaches 0.97
    assert {
        "train/i2t_acc",
        "train/t2i_acc",
        "train/temperature",
        "train/grad_norm",
        "train/lr",
        "train/images_per_sec",
        "train/tflops_per_device",
    } <= set(records[1])
    assert "train/mfu" not in records[1]  # a CPU has no peak in the table
    assert list((workdir / "tensorboard").iterdir())
    assert (workdir / "tokenizer" / "tokenizer.json").exists()

    assert final["probe/num_train"] == 2400 and final["probe/accuracy"] > 0.8

    # `vlx eval` on the final checkpoint reproduces the in-training numbers, and can add
    # evaluators (here retrieval and prompt-weighted zero-shot) from the command line.
    extra = [
        "--config.evals.ret={'type': 'retrieval', 'num_examples': 96}",
        "--config.evals.zpe={'type': 'zeroshot', 'num_examples': 480, 'templates': "
        "('a {}', 'a photo of a {}', '{}', 'a large {} at the top'), 'prompt_weighting': 'zpe'}",
    ]
    done = run_vlx(
        "eval", "--workdir", str(workdir), "--save-embeddings", *extra, devices=1, optimize=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "read only" not in done.stderr and "read_only" not in done.stderr  # Orbax's notices
    printed = done.stdout
    assert "step 300" in printed and "ret/i2t_r1" in printed
    results = json.loads((workdir / "eval" / "300.json").read_text())
    assert results["zeroshot/top1"] == final["zeroshot/top1"]
    assert results["probe/accuracy"] == final["probe/accuracy"]
    assert results["ret/num_images"] == 96 and results["ret/t2i_r10"] > results["ret/t2i_r1"]
    assert results["zpe/num_examples"] == 480 and results["zpe/top1"] > 0.5
    recompute_from_embeddings(workdir / "eval" / "300", results)

    assert cli.main(["plot", "--workdir", str(workdir)]) == 0
    for name in ("training.png", "eval.png"):
        assert (workdir / "plots" / name).read_bytes().startswith(b"\x89PNG")

    # Exported to transformers and open_clip, the model predicts exactly what vlx predicts.
    assert zero_shot_predictions_agree(workdir, tmp_path) > 0.8


def test_training_logs_the_achieved_tflops_and_mfu_of_the_analytic_count(tmp_path, monkeypatch):
    """Each logged step carries TFLOP/s per device by `vlx.flops`' count of the step, frozen
    parameters accounted for, and MFU where the device's peak is known (a stand-in peak here:
    a CPU has none in the table). On CPU the backend reports no device memory."""
    monkeypatch.setattr(flops, "device_peak", lambda kind, dtype: 5e9)
    cfg = tiny_config(total_steps=4, log_every=2, evals={}, optim=dict(freeze="text.*"))
    train.train(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]

    mesh = parallel.make_mesh(cfg.mesh)
    state = train.create_state(cfg, mesh, eos_id=2, tx=optim.make(cfg.optim, 4)[0], abstract=True)
    trained = optim.trained_names(state.arrays["model"], state.trainable)
    assert trained and not any(name.startswith("text.") for name in trained)
    expected = flops.train_step(cfg.model, cfg.batch_size, trained=trained)["total"]
    assert expected < flops.train_step(cfg.model, cfg.batch_size)["total"]
    assert records[0]["step"] == 0 and records[0]["train/gflops_per_step"] * 1e9 == expected

    logged = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in logged] == [2, 4]
    for r in logged:
        achieved = expected * r["train/images_per_sec"] / cfg.batch_size / mesh.size
        assert r["train/tflops_per_device"] * 1e12 == pytest.approx(achieved, rel=1e-9)
        assert r["train/mfu"] == pytest.approx(achieved / 5e9, rel=1e-9)
        assert "train/peak_memory_gb" not in r


def test_throughput_after_an_evaluation_counts_only_the_steps_since_it(tmp_path, monkeypatch):
    """An evaluation at a step that is not a log step: the next log's images/s and the share of
    time spent waiting for batches cover the steps after the evaluation over the time after it.
    On a clock that moves 0.5 s a batch, 1 s a step and 100 s an evaluation, steps 3-4 after an
    evaluation at step 2 make 2 x batch_size images in 3 s, a third of it waiting for data."""
    clock = [0.0]
    monkeypatch.setattr(train, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    stop_agreed, to_mesh = train.stop_agreed, pipeline.to_mesh

    def one_second_a_step(*args):
        clock[0] += 1.0
        return stop_agreed(*args)

    def half_a_second_a_batch(*args, **kwargs):
        for batch in to_mesh(*args, **kwargs):
            clock[0] += 0.5
            yield batch

    def evaluation(cfg, context, step):
        clock[0] += 100.0
        return {}

    monkeypatch.setattr(train, "stop_agreed", one_second_a_step)
    monkeypatch.setattr(pipeline, "to_mesh", half_a_second_a_batch)
    monkeypatch.setattr(train.evals, "run_all", evaluation)
    cfg = tiny_config(
        total_steps=4, log_every=4, evals=dict(zs=dict(type="zeroshot", every_steps=2))
    )
    train.train(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in logged] == [4]
    assert logged[0]["train/images_per_sec"] == pytest.approx(2 * cfg.batch_size / 3)
    assert logged[0]["data/wait_fraction"] == pytest.approx(1 / 3)


def recompute_from_embeddings(saved, results):
    """The saved embeddings give the same numbers by plain NumPy and scikit-learn."""
    z = np.load(saved / "zeroshot.npz")
    predicted = np.argmax(z["image_embeddings"] @ z["classifier"].T, axis=1)
    assert np.mean(predicted == z["labels"]) == results["zeroshot/top1"]
    w = np.load(saved / "zpe.npz")["prompt_weights"]
    assert w.shape == (4,) and abs(w.sum() - 1) < 1e-9 and w.std() > 0

    r = np.load(saved / "ret.npz")
    sim = r["image_embeddings"] @ r["text_embeddings"].T
    owner = r["caption_owner"]
    top = np.argsort(-sim, axis=1, kind="stable")[:, :5]  # ties: the lower index first
    assert (
        np.mean([np.isin(np.flatnonzero(owner == i), t).any() for i, t in enumerate(top)])
        == (results["ret/i2t_r5"])
    )
    top = np.argsort(-sim.T, axis=1, kind="stable")[:, :5]
    assert np.mean([owner[j] in t for j, t in enumerate(top)]) == results["ret/t2i_r5"]

    from sklearn.linear_model import LogisticRegression

    p = np.load(saved / "probe.npz")
    n = len(p["train_labels"])
    ref = LogisticRegression(C=1 / (float(p["l2"]) * n), tol=1e-8, max_iter=10_000)
    ref.fit(p["train_embeddings"], p["train_labels"])
    assert abs(ref.score(p["test_embeddings"], p["test_labels"]) - results["probe/accuracy"]) < 2e-3


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.optim.lrr=1", "unknown config key optim.lrr; did you mean optim.lr"),
        ("--config.mesh.fsdp=3", "fixed axes multiply to 3, which does not divide the 8 devices"),
        ("--config.batch_size=12", "batch_size=12 does not divide over the 8 batch shards"),
        ("--config.optim.freeze=image[", "optim.freeze='image[' is not a regular expression"),
        ("--config.optim.freeze=img.*", "optim.freeze='img.*' matches no parameter; names look"),
        (
            "--config.optim.lr_mults=(('img.*', 0.1),)",
            "optim.lr_mults: 'img.*' matches no trained parameter; names look",
        ),
        (
            "--config.optim.lr_mults=(('image.*', 0.3), ('image.proj.*', 0.1))",
            "optim.lr_mults: every parameter 'image.proj.*' matches is taken by an earlier "
            "pattern (the first match wins); put the narrower pattern first",
        ),
        (
            "--config.optim.lr_mults=(('image.*', -1),)",
            "optim.lr_mults: ('image.*', -1): the multiplier must be a number >= 0",
        ),
        (
            "--config.model.text.vocab_size=8",
            "vocab_size=8 is smaller than the vocabulary",
        ),
    ],
)
def test_bad_config_is_a_one_line_error(tmp_path, capsys, override, message):
    code = cli_train("configs/demo.py", str(tmp_path), override)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("vlx: error: ") and message in err[-1]


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_grad_cache_accumulation_equals_the_full_batch_update(loss):
    """4 microbatches of 8 on the 8-device mesh: the loss sees all 32 examples' negatives, and
    two updates equal the full-batch ones (float32, 1e-5)."""
    bias = -10.0 if loss == "sigmoid" else None
    common = dict(
        batch_size=32, optim=dict(lr=1e-3), loss=dict(type=loss), model=dict(logit_bias_init=bias)
    )
    full = tiny_config(**common)
    micro = tiny_config(**common, microbatches=4)
    batches = [demo_batch(full, 32, offset=32 * i) for i in range(2)]
    mesh = parallel.make_mesh(full.mesh)
    ref_losses, ref_params = run_steps(full, mesh, batches)
    losses, params = run_steps(micro, mesh, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params, ref_params)


def test_patch_dropout_trains_with_and_without_microbatches():
    """Patch dropout draws from (seed, step): the same run twice is identical, and it composes
    with GradCache microbatches."""
    cfg = tiny_config(batch_size=16, model=dict(image=dict(patch_dropout=0.5, image_size=32)))
    batches = [demo_batch(cfg, 16, offset=16 * i) for i in range(2)]
    mesh = parallel.make_mesh(cfg.mesh)
    first, params = run_steps(cfg, mesh, batches)
    again, params_again = run_steps(cfg, mesh, batches)
    assert first == again
    jax.tree.map(np.testing.assert_array_equal, params, params_again)
    micro_cfg = tiny_config(
        batch_size=16, microbatches=2, model=dict(image=dict(patch_dropout=0.5, image_size=32))
    )
    micro, _ = run_steps(micro_cfg, mesh, batches)
    assert all(np.isfinite(micro)) and micro[0] != micro[1]


def test_lr_mults_scale_each_update_by_the_first_matching_rule():
    """AdamW's update (weight decay included) times the multiplier of the first rule that
    matches, layer by layer inside a scanned encoder's stacked arrays."""
    common = dict(batch_size=16, model=dict(scan=True))
    plain = tiny_config(**common, optim=dict(grad_clip=0.0))
    rules = ((r"image\.encoder\.blocks\.0\..*", 0.0), ("image.*", 0.5), (r"text\.proj\..*", 2.0))
    scaled = tiny_config(**common, optim=dict(grad_clip=0.0, lr_mults=rules))
    mesh = parallel.make_mesh(plain.mesh)
    batch = parallel.global_batch(demo_batch(plain, 16), mesh)

    def one_step(cfg):
        state, step = compiled_step(cfg, mesh)
        initial = params_of(state.arrays)
        return initial, params_of(step(state.arrays, batch)[0])

    initial, ref = one_step(plain)
    _, after = one_step(scaled)
    init, ref, after = (flatten(p) for p in (initial, ref, after))
    for name in init:
        mult = optim.lr_mult(rules, name)
        moved = after[name] - init[name]
        np.testing.assert_allclose(moved, mult * (ref[name] - init[name]), atol=1e-6, err_msg=name)
        if mult == 0:
            np.testing.assert_array_equal(after[name], init[name], err_msg=name)
    assert optim.lr_mult(rules, "image.encoder.blocks.0.mlp.fc1.kernel") == 0.0
    assert optim.lr_mult(rules, "image.encoder.blocks.1.mlp.fc1.kernel") == 0.5
    assert optim.lr_mult(rules, "text.proj.kernel") == 2.0
    assert optim.lr_mult(rules, "text.encoder.blocks.0.mlp.fc1.kernel") == 1.0
    assert np.abs(ref["text.proj.kernel"] - init["text.proj.kernel"]).max() > 1e-4


@pytest.mark.parametrize("microbatches", [1, 2])
def test_frozen_parameters_stay_and_the_rest_train_as_without_the_freeze(microbatches):
    """`optim.freeze='image.*'` (LiT): a step leaves the image tower exactly as initialised and
    updates everything else as an unfrozen run's does (AdamW is per parameter; no clipping,
    whose global norm would include the image gradients). The image tower's backward pass is
    not compiled at all: the step does about 40% fewer FLOPs."""
    common = dict(batch_size=16, microbatches=microbatches)
    full = tiny_config(**common, optim=dict(grad_clip=0.0))
    lit = tiny_config(**common, optim=dict(grad_clip=0.0, freeze="image.*"))
    mesh = parallel.make_mesh(full.mesh)
    batch = parallel.global_batch(demo_batch(full, 16), mesh)

    def one_step(cfg):
        state, step = compiled_step(cfg, mesh)
        initial = params_of(state.arrays)
        arrays, _ = step(state.arrays, batch)
        return initial, params_of(arrays), step.cost_analysis()["flops"]

    initial, ref, full_flops = one_step(full)
    _, params, lit_flops = one_step(lit)
    jax.tree.map(np.testing.assert_array_equal, params["image"], initial["image"])
    for trained in ("text", "logit_scale"):
        close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6)  # noqa: E731
        jax.tree.map(close, params[trained], ref[trained])
    assert not np.allclose(params["text"]["proj"]["kernel"], initial["text"]["proj"]["kernel"])
    assert lit_flops < 0.7 * full_flops
