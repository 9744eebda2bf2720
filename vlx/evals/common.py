"""Embedding whole datasets with the training mesh, every example exactly once."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from vlx import compile_options, parallel
from vlx.data import pipeline, sources
from vlx.data.tokenizer import Tokenizer
from vlx.data.transforms import normalize
from vlx.errors import DataError


@dataclasses.dataclass
class Embedded:
    """A dataset's image embeddings in source order; images that failed to load are left out."""

    images: np.ndarray  # [N, E] float32, L2-normalised
    labels: np.ndarray  # [N] int, -1 when unlabelled
    index: np.ndarray  # [N] the source index of each row
    skipped: int  # examples that failed to load


class EvalSources:
    """The evaluators' datasets, each opened once and kept for every evaluation after.

    `vlx.evals.open_sources` opens them all when a run starts, so a wrong path fails in seconds
    rather than at the first evaluation, possibly hours into training."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._open: dict[tuple, object] = {}

    def get(
        self, eval_cfg, *, key: str, split: str = "", dataset: str = "", num_examples: int = -1
    ):
        """`eval_cfg`'s dataset, or another `dataset`/`split` of it (with `num_examples`).

        `key` names the setting that chose it, for errors."""
        num_examples = eval_cfg.num_examples if num_examples < 0 else num_examples
        spec = (dataset or eval_cfg.dataset, split or eval_cfg.split, num_examples or None)
        if spec not in self._open:
            try:
                source = sources.build(
                    spec[0],
                    split=spec[1],
                    image_size=self.cfg.model.image.image_size,
                    data_cfg=self.cfg.data,
                    num_examples=spec[2],
                )
            except DataError as e:
                raise DataError(f"{key}: {e}") from None
            if len(source) == 0:
                raise DataError(f"{key}: {source!r} has no examples to evaluate")
            self._open[spec] = source
        return self._open[spec]


@dataclasses.dataclass
class EvalContext:
    """What an evaluator needs: the model, the mesh, the datasets and the tokenizer.

    `save_dir`, when set, receives each evaluator's embeddings (`<name>.npz`) so that its
    numbers can be recomputed outside vlx. `fixed_images`: the image tower never changes in
    this run (locked by `optim.freeze`), so each dataset's image embeddings are computed once
    and reused by later evaluations.
    """

    cfg: object
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    model_state: nnx.State
    model_sharding: object
    tokenizer: Tokenizer
    sources: EvalSources | None = None
    save_dir: Path | None = None
    fixed_images: bool = False

    def __post_init__(self):
        self._embedded: dict[tuple, tuple[object, Embedded]] = {}
        if self.sources is None:
            self.sources = EvalSources(self.cfg)
        kind = self.cfg.data.normalize
        gd, batch = self.graphdef, parallel.batch_sharding(self.mesh)
        self._sharding = batch
        options = compile_options.options(compile_options.for_model(self.cfg.model, self.mesh))
        self._images = jax.jit(
            parallel.traced_on(
                self.mesh, lambda st, x: nnx.merge(gd, st).encode_image(normalize(x, kind))
            ),
            in_shardings=(self.model_sharding, batch),
            out_shardings=batch,
            compiler_options=options,
        )
        self._texts = jax.jit(
            parallel.traced_on(self.mesh, lambda st, t: nnx.merge(gd, st).encode_text(t)),
            in_shardings=(self.model_sharding, batch),
            out_shardings=batch,
            compiler_options=options,
        )

    @property
    def shards(self) -> int:
        return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    def round_batch(self, size: int) -> int:
        """The per-process batch for a global `size`: a multiple of this process's shards."""
        unit = max(1, self.shards // jax.process_count())
        per_process = -(-size // jax.process_count())
        return -(-per_process // unit) * unit

    def embed_texts(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """[N, E] for `texts`, the same list on every process, `batch_size` texts at a time."""
        tokens, _ = self.tokenizer(list(texts))
        size = self.round_batch(batch_size) * jax.process_count()
        out = []
        for start in range(0, len(tokens), size):
            chunk = tokens[start : start + size]
            padded = np.concatenate(
                [chunk, np.zeros((size - len(chunk), chunk.shape[1]), chunk.dtype)]
            )
            rows = jax.make_array_from_callback(padded.shape, self._sharding, padded.__getitem__)
            out.append(gather(self._texts(self.model_state, rows))[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, self.cfg.model.embed_dim), np.float32)

    def embed_images(self, source, batch_size: int, num_examples: int = 0) -> Embedded:
        """Embeds every example of `source` (the first `num_examples` when > 0) once.

        Each process loads its own range; images, masks, labels and indices travel in the same
        global batch, so they come back aligned whatever the device order."""
        key = (id(source), batch_size, num_examples)
        if self.fixed_images and key in self._embedded and self._embedded[key][0] is source:
            return self._embedded[key][1]
        size = self.round_batch(batch_size)
        keep = []
        for local in pipeline.eval_batches(
            source,
            None,
            batch_size=size,
            image_size=self.cfg.model.image.image_size,
            num_examples=num_examples or None,
            interpolation=self.cfg.data.interpolation,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        ):
            batch = parallel.global_batch(
                {k: local[k] for k in ("image", "mask", "label", "index")}, self.mesh
            )
            emb = gather(self._images(self.model_state, batch["image"]))
            mask = gather(batch["mask"]) > 0
            keep.append((emb[mask], gather(batch["label"])[mask], gather(batch["index"])[mask]))
        n = len(source) if not num_examples else min(num_examples, len(source))
        if not keep:
            raise DataError(f"{source!r} has no examples to evaluate")
        images, labels, index = (np.concatenate(parts) for parts in zip(*keep, strict=True))
        order = np.argsort(index, kind="stable")
        embedded = Embedded(images[order], labels[order], index[order], skipped=n - len(index))
        if self.fixed_images:
            for array in (embedded.images, embedded.labels, embedded.index):
                array.flags.writeable = False  # shared by every later evaluation
            self._embedded[key] = (source, embedded)
        return embedded

    def save(self, name: str, **arrays) -> None:
        """Writes `arrays` to `save_dir/<name>.npz` (process 0, only when saving is on)."""
        if self.save_dir is not None and jax.process_index() == 0:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            np.savez(self.save_dir / f"{name}.npz", **arrays)


def gather(x) -> np.ndarray:
    """A global jax.Array -> the full numpy array on every process."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
