"""Built-in synthetic image-caption data: coloured shapes a small model can learn in minutes.

Each example is a shape (circle, square, triangle, cross) of one colour, size and position on a
noisy background, captioned in words ("a large red circle on the left"). The class of an image
is its (colour, shape) pair. Some pairs never appear in the training split (`holdout=True`): the
test split draws from all pairs, so zero-shot accuracy on the held-out pairs measures whether the
model composes words it learned separately. The probe split (all pairs, other images) trains
linear probes. Examples are a pure function of (split, index): the
source is random-access, deterministic and needs no files.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from vlx.errors import DataError

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 210),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
POSITIONS = {
    "on the left": (0.28, 0.5),
    "on the right": (0.72, 0.5),
    "at the top": (0.5, 0.28),
    "at the bottom": (0.5, 0.72),
    "in the middle": (0.5, 0.5),
}
CLASSES = tuple(f"{c} {s}" for c, s in itertools.product(COLORS, SHAPES))
HELD_OUT = frozenset(
    f"{c} {s}"
    for (ci, c), (si, s) in itertools.product(enumerate(COLORS), enumerate(SHAPES))
    if (ci + si) % len(COLORS) == 0
)
TEMPLATES = ("a {}", "a photo of a {}", "{}")
WORDS = sorted(
    {w for text in (*COLORS, *SHAPES, *SIZES, *POSITIONS, *TEMPLATES) for w in text.split()}
    - {"{}"}
)
_SPLIT_SEED = {"train": 0, "test": 1, "probe": 2}
EVAL_EXAMPLES = 1000  # the size of a test or probe split unless an evaluator sets num_examples


@dataclasses.dataclass(frozen=True)
class DemoSource:
    """A grain random-access source of `num_examples` rendered examples."""

    split: str = "train"
    num_examples: int = 1_000_000
    image_size: int = 32
    holdout: bool = True

    def __post_init__(self):
        if self.split not in _SPLIT_SEED:
            raise DataError(f"demo split {self.split!r}: choose one of {', '.join(_SPLIT_SEED)}")

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASSES

    @property
    def unseen_labels(self) -> tuple[int, ...]:
        """Labels of the held-out (colour, shape) pairs: never shown by the training split."""
        return tuple(i for i, c in enumerate(CLASSES) if c in HELD_OUT) if self.holdout else ()

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return f"demo:{self.split}"

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([_SPLIT_SEED[self.split], int(index)])
        allowed = [
            i
            for i, name in enumerate(CLASSES)
            if not (self.split == "train" and self.holdout and name in HELD_OUT)
        ]
        label = int(allowed[rng.integers(len(allowed))])
        color, shape = CLASSES[label].split()
        size = SIZES[rng.integers(len(SIZES))]
        position = list(POSITIONS)[rng.integers(len(POSITIONS))]
        image = render(rng, self.image_size, COLORS[color], shape, size, POSITIONS[position])
        return dict(image=image, captions=[caption(rng, color, shape, size, position)], label=label)


def caption(rng: np.random.Generator, color: str, shape: str, size: str, position: str) -> str:
    """A caption naming colour and shape, and sometimes size and position."""
    words = [size] if rng.random() < 0.5 else []
    words += [color, shape]
    if rng.random() < 0.5:
        words.append(position)
    prefix = ("a", "a photo of a", "")[rng.integers(3)]
    return " ".join(filter(None, [prefix, *words]))


def render(
    rng: np.random.Generator,
    image_size: int,
    rgb: tuple[int, int, int],
    shape: str,
    size: str,
    center: tuple[float, float],
) -> np.ndarray:
    """uint8 [S, S, 3]: one shape with colour and position jitter on a noisy background."""
    s = image_size
    radius = s * (0.13 if size == "small" else 0.24) * rng.uniform(0.9, 1.1)
    cx, cy = (np.asarray(center) + rng.uniform(-0.06, 0.06, size=2)) * s
    y, x = np.mgrid[:s, :s] + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        mask = dx**2 + dy**2 <= radius**2
    elif shape == "square":
        mask = (np.abs(dx) <= 0.85 * radius) & (np.abs(dy) <= 0.85 * radius)
    elif shape == "triangle":
        mask = (dy <= 0.8 * radius) & (np.abs(dx) <= 0.62 * (dy + radius)) & (dy >= -radius)
    else:
        bar = radius / 3
        mask = ((np.abs(dx) <= bar) & (np.abs(dy) <= radius)) | (
            (np.abs(dy) <= bar) & (np.abs(dx) <= radius)
        )
    background = rng.uniform(0, 70) + rng.normal(0, 8, size=(s, s, 1))
    color = np.clip(np.asarray(rgb) + rng.normal(0, 15, size=3), 0, 255)
    image = np.where(mask[..., None], color, background) + rng.normal(0, 6, size=(s, s, 3))
    return np.clip(image, 0, 255).astype(np.uint8)
