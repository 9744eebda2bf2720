"""Embedding datasets on the 8-device mesh: every example once, in source order."""

import jax
import numpy as np
from flax import nnx

from tests.helpers import tiny_config
from vlx import parallel, train
from vlx.data import tokenizer as tokenizer_lib
from vlx.data.transforms import normalize
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


def test_texts_embed_in_order_across_batches():
    context, model, tok = _context()
    texts = [f"a red circle {i}" for i in range(11)]
    out = context.embed_texts(texts, batch_size=8)
    tokens, _ = tok(texts)
    np.testing.assert_allclose(out, model.encode_text(tokens), atol=1e-5)
