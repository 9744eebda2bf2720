"""vlx: image-text dual encoders (CLIP, SigLIP, LiT) in JAX/Flax."""

__version__ = "0.1.0"
