"""Image decoding, cropping and normalisation.

Host side (in Grain workers): decode bytes with PIL, random-resized-crop for training, resize +
centre-crop for evaluation, always to uint8 [S, S, 3]. Device side: `normalize`, so batches
travel to the accelerator as uint8 (4x fewer bytes than float32).
"""

from __future__ import annotations

import io
import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

NORMALIZATION = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "minus_one_to_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def normalize(images: jax.Array, kind: str) -> jax.Array:
    """uint8 [..., 3] -> float32, (x / 255 - mean) / std."""
    mean, std = NORMALIZATION[kind]
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def to_pil(image: bytes | np.ndarray, target: int) -> Image.Image:
    """An RGB PIL image from encoded bytes or a uint8 array. JPEGs larger than twice the target
    are decoded at reduced size (PIL's draft mode), which is much faster and loses nothing."""
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    pil = Image.open(io.BytesIO(image))
    if pil.format == "JPEG":
        pil.draft("RGB", (2 * target, 2 * target))
    return pil.convert("RGB")


def random_resized_crop(
    pil: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: str = "bicubic",
) -> np.ndarray:
    """A random crop covering `scale` of the area with aspect ratio in `ratio`, resized to
    size x size (as torchvision's RandomResizedCrop, with the same fallback to a centre crop)."""
    w, h = pil.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x = int(rng.integers(0, w - cw + 1))
            y = int(rng.integers(0, h - ch + 1))
            break
    else:
        cw = ch = min(w, h)
        x, y = (w - cw) // 2, (h - ch) // 2
    box = (x, y, x + cw, y + ch)
    return np.asarray(pil.resize((size, size), INTERPOLATION[interpolation], box=box))


def resize_center_crop(pil: Image.Image, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Shorter side resized to `size`, then the central size x size crop.

    Sizes round down, as in transformers' CLIPImageProcessor and torchvision's Resize, so an
    exported model's processor reproduces these pixels exactly."""
    w, h = pil.size
    if (w, h) == (size, size):
        return np.asarray(pil)
    short = min(w, h)
    nw, nh = max(size, w * size // short), max(size, h * size // short)
    pil = pil.resize((nw, nh), INTERPOLATION[interpolation])
    x, y = (nw - size) // 2, (nh - size) // 2
    return np.asarray(pil.crop((x, y, x + size, y + size)))
