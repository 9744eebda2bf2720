"""Embedding whole datasets with the training mesh, every example exactly once."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from vlx import parallel
from vlx.data import pipeline, sources
from vlx.data.tokenizer import Tokenizer
from vlx.data.transforms import normalize


@dataclasses.dataclass
class EvalContext:
    """What an evaluator needs: the model, the mesh, the data settings and the tokenizer."""

    cfg: object
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    model_state: nnx.State
    model_sharding: object
    tokenizer: Tokenizer

    def __post_init__(self):
        kind = self.cfg.data.normalize
        gd, batch = self.graphdef, parallel.batch_sharding(self.mesh)
        self._images = jax.jit(
            parallel.traced_on(
                self.mesh, lambda st, x: nnx.merge(gd, st).encode_image(normalize(x, kind))
            ),
            in_shardings=(self.model_sharding, batch),
            out_shardings=batch,
        )
        self._texts = jax.jit(
            parallel.traced_on(self.mesh, lambda st, t: nnx.merge(gd, st).encode_text(t)),
            in_shardings=(self.model_sharding, batch),
            out_shardings=batch,
        )

    @property
    def shards(self) -> int:
        return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    def round_batch(self, size: int) -> int:
        """`size` rounded up to a multiple of the batch shards (per process)."""
        unit = max(1, self.shards // jax.process_count())
        return -(-size // unit) * unit

    def embed(self, fn, local: np.ndarray) -> np.ndarray:
        """Runs an encoder on this process's rows; all rows of all processes, on every host."""
        n = len(local)
        size = self.round_batch(n)
        padded = np.concatenate([local, np.zeros((size - n, *local.shape[1:]), local.dtype)])
        out = fn(self.model_state, parallel.global_batch({"x": padded}, self.mesh)["x"])
        return gather(out)[: n * jax.process_count()]

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        return self.embed(self._images, images)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens, _ = self.tokenizer(texts)
        return self.embed(self._texts, tokens)

    def source(self, eval_cfg):
        return sources.build(
            eval_cfg.dataset,
            split=eval_cfg.split,
            image_size=self.cfg.model.image.image_size,
            data_cfg=self.cfg.data,
            num_examples=eval_cfg.num_examples,
        )

    def image_embeddings(self, source, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings [N, E], labels [N]) for the whole source, padding dropped."""
        size = self.round_batch(batch_size)
        embs, labels = [], []
        for batch in pipeline.eval_batches(
            source,
            None,
            batch_size=size,
            image_size=self.cfg.model.image.image_size,
            interpolation=self.cfg.data.interpolation,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        ):
            emb = self.embed_images(batch["image"])
            mask = gather(batch["mask"]) > 0
            embs.append(emb[mask])
            labels.append(gather(batch["label"])[mask])
        return np.concatenate(embs), np.concatenate(labels)


def gather(x) -> np.ndarray:
    """A global jax.Array or per-process numpy rows -> the full numpy array on every process."""
    if isinstance(x, jax.Array) and x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
