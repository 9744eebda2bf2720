"""Flax NNX towers and the two-tower model."""
