"""Grain pipelines: an endless shuffled training stream, and ordered, padded eval batches.

Training: per source, a seeded global shuffle of indices (a new permutation each epoch) ->
`LoadExample` (decode, crop, pick a caption; a bad example is replaced by the next good one and
counted) -> weighted mixture of the sources -> this process's slice -> batch -> tokenise ->
optional worker processes. Same seed, same batches, whatever the number of workers.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import gc
import itertools
import logging
from collections.abc import Iterator

import grain
import numpy as np

from vlx.data import sources as sources_lib
from vlx.data import transforms
from vlx.data.tokenizer import Tokenizer
from vlx.errors import DataError

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_BAD = 100


class LoadExample(grain.transforms.RandomMap):
    """index -> dict(image uint8 [S, S, 3], caption, label, skipped, index)."""

    def __init__(
        self,
        source,
        image_size: int,
        *,
        train: bool,
        crop: str = "random_resized",
        scale: tuple[float, float] = (0.9, 1.0),
        interpolation: str = "bicubic",
    ):
        self.source = source
        self.size = image_size
        self.train = train
        self.crop = crop
        self.scale = tuple(scale)
        self.interpolation = interpolation

    def random_map(self, index, rng: np.random.Generator) -> dict:
        """Training replaces a bad example by the next good one; evaluation, where every
        example must count once, returns a placeholder with `skipped=1` that is masked out."""
        reason = ""
        for attempt in range(MAX_CONSECUTIVE_BAD if self.train else 1):
            i = (int(index) + attempt) % len(self.source)
            try:
                example = self.source[i]
                captions = [c for c in example["captions"] if c and c.strip()]
                if self.train and not captions:  # evaluators need only the image
                    raise ValueError("empty caption")
                image = self._image(example["image"], rng)
            except Exception as e:  # any bad example is skipped, never a crash mid-run
                reason = f"example {i} of {self.source!r}: {type(e).__name__}: {e}"
                log.warning("skipped %s", reason)
                continue
            caption = captions[rng.integers(len(captions))] if self.train else (captions or [""])[0]
            return dict(
                image=image,
                caption=caption,
                label=np.int32(example.get("label", -1)),
                skipped=np.int32(attempt),
                index=np.int32(i),
            )
        if not self.train:
            return dict(
                image=np.zeros((self.size, self.size, 3), np.uint8),
                caption="",
                label=np.int32(-1),
                skipped=np.int32(1),
                index=np.int32(index),
            )
        raise DataError(f"{MAX_CONSECUTIVE_BAD} consecutive examples are bad; last: {reason}")

    def _image(self, image, rng) -> np.ndarray:
        pil = transforms.to_pil(image, self.size)
        if self.train and self.crop == "random_resized":
            out = transforms.random_resized_crop(
                pil, self.size, rng, self.scale, interpolation=self.interpolation
            )
        else:
            out = transforms.resize_center_crop(pil, self.size, self.interpolation)
        if out.shape != (self.size, self.size, 3):
            raise ValueError(f"image decoded to shape {out.shape}")
        return out


class TokenizeBatch(grain.transforms.Map):
    """Turns a batch's captions into token ids; sums truncations and skips per batch."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def map(self, batch: dict) -> dict:
        batch = dict(batch)
        tokens, truncated = self.tokenizer([str(c) for c in batch.pop("caption")])
        batch["tokens"] = tokens
        batch["truncated"] = np.int32(truncated)
        if "skipped" in batch:
            batch["skipped"] = np.int32(np.sum(batch["skipped"]))
        return batch


def train_dataset(
    sources: list,
    weights: list[float],
    tokenizer: Tokenizer,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    data_cfg=None,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
) -> grain.IterDataset:
    """This process's endless stream of batches of `batch_size` (the per-process batch)."""
    crop = dict(
        crop=data_cfg.train_crop if data_cfg else "random_resized",
        scale=tuple(data_cfg.crop_scale) if data_cfg else (0.9, 1.0),
        interpolation=data_cfg.interpolation if data_cfg else "bicubic",
    )
    streams = []
    for k, source in enumerate(sources):
        ds = grain.MapDataset.range(len(source)).seed(seed + 1000 * k).shuffle().repeat()
        streams.append(ds.random_map(LoadExample(source, image_size, train=True, **crop)))
    ds = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights)
    ds = ds[process_index::process_count]
    ds = ds.batch(batch_size, drop_remainder=True).map(TokenizeBatch(tokenizer))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if num_workers > 0:
        _absl_flags_ready()
        atexit.unregister(_finish_shared_memory_unlinks)  # registered once, and last
        atexit.register(_finish_shared_memory_unlinks)
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it


def _finish_shared_memory_unlinks() -> None:
    """Waits, at exit, for Grain to unlink the shared memory of the batches already consumed.

    Grain's worker processes hand batches over in shared memory, which the consumer unlinks on
    a background thread pool (grain 0.2's `SharedMemoryArray.enable_async_del`). At exit
    `multiprocessing` stops that pool with unlinks still queued, and Python's resource tracker
    then warns of "N leaked shared_memory objects" (and removes them) after every run with
    `data.num_workers > 0`. Registered after `multiprocessing`'s own exit handler, this runs
    before it: it frees the last batches, then queues a no-op behind their unlinks on the pool's
    one thread and waits for it. Grain has no public call for this; where its pool is gone (a
    later Grain), it does nothing.
    """
    gc.collect()
    with contextlib.suppress(ImportError, AttributeError, ValueError):  # ValueError: stopped
        from grain._src.python.ipc.shared_memory_array import SharedMemoryArray

        SharedMemoryArray._del_thread_pool.apply(int)


def _absl_flags_ready() -> None:
    """Grain's worker processes read absl flags; vlx parses none, so take the defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def train_from_config(
    cfg, tokenizer: Tokenizer, *, batch_size: int, process_index: int = 0, process_count: int = 1
) -> grain.IterDataset:
    """The training stream that `cfg.data` describes (sources, mixture weights, crops)."""
    specs = sources_lib.parse_mixture(cfg.data.source)
    image_size = cfg.model.image.image_size
    srcs = [
        sources_lib.build(spec, split="train", image_size=image_size, data_cfg=cfg.data)
        for spec, _ in specs
    ]
    return train_dataset(
        srcs,
        [w for _, w in specs],
        tokenizer,
        image_size=image_size,
        batch_size=batch_size,
        seed=cfg.seed,
        data_cfg=cfg.data,
        process_index=process_index,
        process_count=process_count,
        num_workers=cfg.data.num_workers,
    )


def to_mesh(batches: Iterator[dict], mesh, keys=("image", "tokens"), ahead: int = 2):
    """Yields (global batch of `keys` on the mesh, the rest of the host batch, iterator state).

    Keeps `ahead` batches in flight so that host-to-device copies overlap the step. The state is
    the host iterator's state right after that batch: restoring it resumes with the next one.
    """
    # Imported here, not at the top: Grain's worker processes import this module to unpickle
    # LoadExample, and vlx.parallel would load JAX in every one of them.
    from vlx import parallel

    queue = collections.deque()

    def fetch(n):
        for local in itertools.islice(batches, n):
            state = batches.get_state() if hasattr(batches, "get_state") else None
            extras = {k: v for k, v in local.items() if k not in keys}
            device = parallel.global_batch({k: local[k] for k in keys}, mesh)
            queue.append((device, extras, state))

    fetch(ahead)
    while queue:
        yield queue.popleft()
        fetch(1)


def eval_batches(
    source,
    tokenizer: Tokenizer | None,
    *,
    batch_size: int,
    image_size: int | None = None,
    num_examples: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    interpolation: str = "bicubic",
) -> Iterator[dict]:
    """Every example once, in order: full batches, the last one padded and masked.

    Each batch has `mask` (1 for real examples) and `index` (the source index), so that padding
    and images that fail to load never count. Processes take contiguous, equally sized ranges; a
    process whose range is shorter pads more.
    """
    n = len(source) if num_examples is None else min(num_examples, len(source))
    per_process = -(-n // process_count)
    steps = -(-per_process // batch_size)
    start = process_index * per_process
    stop = min(n, start + per_process)
    ds = grain.MapDataset.range(start, stop)
    if image_size is not None:
        load = LoadExample(source, image_size, train=False, interpolation=interpolation)
        ds = ds.random_map(load, seed=0)
    else:
        ds = ds.map(lambda i: {**source[int(i)], "index": np.int32(i)})
    ds = ds.batch(batch_size, drop_remainder=False)
    if tokenizer is not None:
        ds = ds.map(TokenizeBatch(tokenizer))
    batches = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))
    for _ in range(steps):
        yield _pad(next(batches, None), batch_size, image_size)


def _pad(batch: dict | None, size: int, image_size: int | None) -> dict:
    if batch is None:  # this process ran out before the others: an all-padding batch
        s = image_size or 1
        batch = {"image": np.zeros((0, s, s, 3), np.uint8), "label": np.zeros((0,), np.int32)}
    n = len(batch["label"])
    valid = 1 - np.asarray(batch.get("skipped", np.zeros(n)), np.float32)
    out = {"mask": np.concatenate([valid, np.zeros(size - n, np.float32)])}
    for key, value in batch.items():
        if not isinstance(value, np.ndarray) or value.ndim == 0:
            continue
        pad = np.zeros((size - n, *value.shape[1:]), value.dtype)
        out[key] = np.concatenate([value, pad])
    return out
