"""Image normalisation, done on the device so that batches travel as uint8."""

from __future__ import annotations

import jax
import jax.numpy as jnp

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

NORMALIZATION = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "minus_one_to_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def normalize(images: jax.Array, kind: str) -> jax.Array:
    """uint8 [..., 3] -> float32, (x / 255 - mean) / std."""
    mean, std = NORMALIZATION[kind]
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
