"""Evaluation data: datasets opened once at start, embedded on the 8-device mesh in order."""

import jax
import numpy as np
import pytest
from flax import nnx

from tests.helpers import tiny_config
from vlx import config, evals, parallel, train
from vlx.data import sources as sources_lib
from vlx.data import tokenizer as tokenizer_lib
from vlx.data.transforms import normalize
from vlx.errors import DataError
from vlx.evals import linear_probe
from vlx.evals.common import EvalContext


class _Source:
    """13 labelled 16x16 images; example 5 is not an image."""

    classes = tuple(f"class {i}" for i in range(4))

    def __len__(self):
        return 13

    def __getitem__(self, i):
        image = b"not an image" if i == 5 else np.full((16, 16, 3), 17 * i, np.uint8)
        return {"image": image, "captions": [f"caption {i}"], "label": i % 4}


def _context():
    cfg = tiny_config()
    mesh = parallel.make_mesh(cfg.mesh)
    tok = tokenizer_lib.load(cfg.data.tokenizer, cfg.model.text.context_length)
    state = train.create_state(cfg, mesh, eos_id=tok.eos_id, tx=None)
    model = state.arrays["model"]
    context = EvalContext(cfg, mesh, state.graphdefs["model"], model, state.shardings["model"], tok)
    return context, nnx.merge(state.graphdefs["model"], jax.device_get(model)), tok


def test_images_embed_once_each_in_order_skipping_bad_ones():
    context, model, _ = _context()
    source = _Source()
    data = context.embed_images(source, batch_size=8)  # 13 = 8 + a partial batch of 5
    assert list(data.index) == [i for i in range(13) if i != 5]
    assert data.skipped == 1
    assert list(data.labels) == [i % 4 for i in data.index]
    images = np.stack([source[int(i)]["image"] for i in data.index])
    expected = model.encode_image(normalize(images, "clip"))
    np.testing.assert_allclose(data.images, expected, atol=1e-5)
    assert context.embed_images(source, batch_size=8, num_examples=4).index.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("fixed", [False, True])
def test_a_locked_image_tower_embeds_each_dataset_once_per_run(fixed):
    """`fixed_images` (the image tower frozen by `optim.freeze`): later evaluations reuse the
    embeddings, read-only; otherwise every evaluation embeds the images again."""
    context, _, _ = _context()
    context.fixed_images = fixed
    calls, embed = [], context._images
    context._images = lambda *args: calls.append(1) or embed(*args)
    source = _Source()
    first = context.embed_images(source, batch_size=8)
    again = context.embed_images(source, batch_size=8)
    assert len(calls) == (2 if fixed else 4)  # 13 images: two batches of 8 each time
    np.testing.assert_array_equal(first.images, again.images)
    assert (again is first) == fixed and first.images.flags.writeable != fixed
    context.embed_images(source, batch_size=8, num_examples=4)  # another subset: embedded
    assert len(calls) == (3 if fixed else 5)


def test_texts_embed_in_order_across_batches():
    context, model, tok = _context()
    texts = [f"a red circle {i}" for i in range(11)]
    out = context.embed_texts(texts, batch_size=8)
    tokens, _ = tok(texts)
    np.testing.assert_allclose(out, model.encode_text(tokens), atol=1e-5)


def test_eval_sources_open_once_at_start_and_are_reused(monkeypatch):
    opened = []
    build = sources_lib.build

    def counting_build(spec, **kwargs):
        opened.append((spec, kwargs["split"]))
        return build(spec, **kwargs)

    monkeypatch.setattr(sources_lib, "build", counting_build)
    cfg = config.load("configs/demo.py")
    sources = evals.open_sources(cfg)
    # zero-shot and the probe's test side share (demo, test, 1200); the probe trains on `probe`
    assert opened == [("demo", "test"), ("demo", "probe")]
    test, train_source = linear_probe.prepare(cfg.evals.probe, sources, name="probe")
    assert (len(test), len(train_source), repr(train_source)) == (1200, 2400, "demo:probe")
    assert len(opened) == 2

    monkeypatch.setattr(sources_lib, "build", lambda spec, **kw: [])
    with pytest.raises(DataError, match=r"^evals\.ret\.dataset: \[\] has no examples"):
        evals.open_sources(
            config.load("configs/demo.py", ["--config.evals={'ret': {'type': 'retrieval'}}"])
        )


def test_held_out_unless_the_evaluator_reads_what_the_run_trains_on():
    cfg = config.load("configs/small.py:data/pets")
    zeroshot = cfg.evals.zeroshot
    assert not evals.held_out(cfg, zeroshot)  # the training dataset itself, whatever the split
    zeroshot.dataset = "arrayrecord:data/pets-test"
    assert evals.held_out(cfg, zeroshot)
    cfg.data.source = "arrayrecord:data/cc3m=0.5,arrayrecord:data/pets-test=0.5"
    assert not evals.held_out(cfg, zeroshot)
    demo = config.load("configs/demo.py")
    assert all(evals.held_out(demo, e) for e in demo.evals.values())  # test and probe splits
