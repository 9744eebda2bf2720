"""Benchmarks. `data`: decoded and augmented training images per second from a source."""

from __future__ import annotations

import time

from vlx.data import pipeline, sources
from vlx.data import tokenizer as tokenizer_lib


def data_throughput(
    spec: str,
    data_cfg,
    *,
    image_size: int,
    batch_size: int = 64,
    num_workers: int = 0,
    batches: int = 20,
    warmup: int = 3,
    tokenizer: str = "demo",
) -> dict:
    """Times the training input pipeline alone: load, decode, random-resized-crop, tokenise."""
    source = sources.build(spec, split="train", image_size=image_size, data_cfg=data_cfg)
    tok = tokenizer_lib.load(tokenizer, context_length=77)
    ds = pipeline.train_dataset(
        [source],
        [1.0],
        tok,
        image_size=image_size,
        batch_size=batch_size,
        seed=0,
        data_cfg=data_cfg,
        num_workers=num_workers,
    )
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - t0
    images_per_sec = batches * batch_size / seconds
    return {
        "source": repr(source),
        "image_size": image_size,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "images_per_sec": round(images_per_sec, 1),
        "images_per_sec_per_worker": round(images_per_sec / max(1, num_workers), 1),
    }
