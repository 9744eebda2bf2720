"""Example sources named by spec strings, as `config.data.source` and evaluators' `dataset`.

- `demo`: the built-in synthetic shapes (vlx/data/demo.py).
- `arrayrecord:PATH` (or just `PATH`): a dataset built by `vlx data build`.
- `tfds:NAME[:SPLIT]`: a TensorFlow Datasets dataset prepared in ArrayRecord format, read with
  `tfds.data_source` (no TensorFlow at run time); keys from `config.data.tfds`.
- A weighted mixture: `SPEC=WEIGHT,SPEC=WEIGHT`, e.g. `arrayrecord:/d/cc3m=0.8,demo=0.2`.

A source has `__len__` and `__getitem__(i) -> dict(image=bytes or uint8 [H, W, 3],
captions=list[str], label=int)`, and `classes` (label names) when it is labelled.
"""

from __future__ import annotations

import os

import numpy as np

from vlx.data import demo
from vlx.data.demo import DemoSource
from vlx.data.records import ArrayRecordSource
from vlx.errors import DataError


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """'a=0.7,b=0.3' -> [('a', 0.7), ('b', 0.3)]; a single spec has weight 1."""
    parts = []
    for item in spec.split(","):
        name, _, weight = item.strip().rpartition("=") if "=" in item else (item.strip(), "", "1")
        try:
            w = float(weight)
        except ValueError:
            raise DataError(f"data source {item!r}: weight {weight!r} is not a number") from None
        if w <= 0:
            raise DataError(f"data source {item!r}: weight must be positive")
        parts.append((name, w))
    return parts


def _resolve(spec: str, split: str) -> tuple[str, str, str]:
    """(kind, name or path, split) of a single source spec: `demo`, `tfds` (a split in the
    spec wins) or `arrayrecord` (a bare path is one; it has no splits)."""
    kind, _, rest = spec.partition(":")
    if spec == "demo":
        return "demo", "", split
    if kind == "tfds":
        name, _, tfds_split = rest.partition(":")
        return "tfds", name, tfds_split or split
    return "arrayrecord", rest if kind == "arrayrecord" else spec, ""


def identity(spec: str, split: str) -> tuple[str, str, str]:
    """What `build(spec, split=split)` reads, comparable across spellings: an ArrayRecord
    dataset is one directory whatever the split; the demo and TFDS datasets have splits."""
    kind, name, split = _resolve(spec, split)
    return kind, os.path.realpath(name) if kind == "arrayrecord" else name, split


def build(spec: str, *, split: str, image_size: int, data_cfg, num_examples: int | None = None):
    """The source named by `spec` (a single one, not a mixture)."""
    kind, name, split = _resolve(spec, split)
    if kind == "demo":
        return DemoSource(
            split=split,
            num_examples=num_examples
            or (data_cfg.demo.num_examples if split == "train" else demo.EVAL_EXAMPLES),
            image_size=image_size,
            holdout=data_cfg.demo.holdout,
        )
    if kind == "tfds":
        return TfdsSource(name, split, data_cfg.tfds)
    return ArrayRecordSource(name)


class TfdsSource:
    """A TFDS dataset prepared as ArrayRecord, read without TensorFlow."""

    def __init__(self, name: str, split: str, tfds_cfg):
        import tensorflow_datasets as tfds

        try:
            self._data = tfds.data_source(name, split=split, data_dir=tfds_cfg.data_dir or None)
        except Exception as e:
            raise DataError(
                f"tfds:{name}:{split}: cannot open ({type(e).__name__}: {str(e).splitlines()[0]});"
                " prepare it in ArrayRecord format and set data.tfds.data_dir"
            ) from None
        self.spec = f"tfds:{name}:{split}"
        self.keys = tfds_cfg
        features = self._data.dataset_info.features
        # FeaturesDict has no .get
        label = features[self.keys.label_key] if self.keys.label_key in features else None  # noqa: SIM401
        self.classes = tuple(getattr(label, "names", None) or ())

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> dict:
        example = self._data[int(index)]
        text = _lookup(example, self.keys.text_key) if self.keys.text_key else None
        if text is None and self.classes:
            text = self.classes[int(_lookup(example, self.keys.label_key))]
        texts = text if isinstance(text, list | tuple | np.ndarray) else [text]
        captions = [t.decode() if isinstance(t, bytes) else str(t) for t in texts]
        label = _lookup(example, self.keys.label_key) if self.keys.label_key else -1
        image = np.asarray(_lookup(example, self.keys.image_key))
        return dict(image=image, captions=captions, label=int(-1 if label is None else label))

    def __repr__(self) -> str:
        return self.spec


def _lookup(example: dict, key: str):
    """`key` may be nested with '/', e.g. 'captions/text'."""
    for part in key.split("/"):
        if not isinstance(example, dict) or part not in example:
            return None
        example = example[part]
    return example
