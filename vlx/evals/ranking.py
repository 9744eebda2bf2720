"""Ranks of positives among scores, shared by zero-shot top-k and retrieval recall@K."""

from __future__ import annotations

import numpy as np


def rank(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Per row of scores [N, M], the 0-based rank of its best-scoring positive column.

    Rank = #(negatives scoring higher) + #(negatives scoring equal at a lower index), so ties
    go to the lower index (as argmax does) and results never depend on sort order. A row
    counts as retrieved at K when its rank < K; with several positives (several captions per
    image) the best one counts.
    """
    masked = np.where(positive, scores, -np.inf)
    best = masked.max(axis=1, keepdims=True)
    first = np.argmax(masked == best, axis=1)[:, None]
    before = np.arange(scores.shape[1])[None, :] < first
    negative = ~positive
    higher = (scores > best) & negative
    tied = (scores == best) & negative & before
    return higher.sum(axis=1) + tied.sum(axis=1)
