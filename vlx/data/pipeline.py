"""Grain pipelines: an endless shuffled training stream, and ordered, padded eval batches."""

from __future__ import annotations

from collections.abc import Iterator

import grain
import numpy as np

from vlx.data.tokenizer import Tokenizer


class TokenizeBatch(grain.transforms.Map):
    """Turns a batch's captions into token ids; counts truncations in `truncated`."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def map(self, batch: dict) -> dict:
        batch = dict(batch)
        tokens, truncated = self.tokenizer([str(c) for c in batch.pop("caption")])
        batch["tokens"] = tokens
        batch["truncated"] = np.int32(truncated)
        return batch


def train_dataset(
    source,
    tokenizer: Tokenizer,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
) -> grain.IterDataset:
    """Globally shuffled (a new permutation each epoch), this process's slice, batched.

    `batch_size` is the per-process batch. Same seed, same batches, whatever `num_workers`.
    """
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
    ds = ds[process_index::process_count]
    ds = ds.batch(batch_size, drop_remainder=True).map(TokenizeBatch(tokenizer))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it


def eval_batches(
    source,
    tokenizer: Tokenizer | None,
    *,
    batch_size: int,
    num_examples: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict]:
    """Every example once, in order: full batches, the last one padded and masked.

    Each batch has `mask` (1 for real examples) so that padding never counts. Processes take
    contiguous, equally sized ranges; a process whose range is shorter pads more.
    """
    n = len(source) if num_examples is None else min(num_examples, len(source))
    per_process = -(-n // process_count)
    steps = -(-per_process // batch_size)
    start = process_index * per_process
    stop = min(n, start + per_process)
    ds = grain.MapDataset.range(start, stop).map(lambda i: source[int(i)])
    ds = ds.batch(batch_size, drop_remainder=False)
    if tokenizer is not None:
        ds = ds.map(TokenizeBatch(tokenizer))
    batches = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)))
    for _ in range(steps):
        batch = next(batches, None)
        yield _pad(batch, batch_size, template=source[0])


def _pad(batch: dict | None, size: int, template: dict) -> dict:
    if batch is None:  # this process ran out before the others: an all-padding batch
        batch = {
            "image": np.zeros((0, *template["image"].shape), np.uint8),
            "label": np.zeros((0,), np.int64),
        }
    n = len(batch["image"])
    out = {"mask": np.concatenate([np.ones(n, np.float32), np.zeros(size - n, np.float32)])}
    for key, value in batch.items():
        if key == "truncated" or not isinstance(value, np.ndarray) or value.ndim == 0:
            continue
        pad = np.zeros((size - n, *value.shape[1:]), value.dtype)
        out[key] = np.concatenate([value, pad])
    return out
