"""Random-access example sources, selected by `config.data.source` or an evaluator's `dataset`.

A source has `__len__`, `__getitem__(i) -> dict(image=uint8 [H, W, 3], caption=str, label=int)`
and, when it has labels, `classes` (the class names, indexed by label).
"""

from __future__ import annotations

from vlx.data.demo import DemoSource
from vlx.errors import ConfigError


def build(name: str, *, split: str, image_size: int, data_cfg, num_examples: int | None = None):
    if name == "demo":
        return DemoSource(
            split=split,
            num_examples=num_examples or data_cfg.demo.num_examples,
            image_size=image_size,
            holdout=data_cfg.demo.holdout,
        )
    raise ConfigError(f"dataset {name!r} is not known; available: demo")
