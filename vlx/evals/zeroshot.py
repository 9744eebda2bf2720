"""Zero-shot classification: images against the averaged embeddings of prompts per class."""

from __future__ import annotations

import numpy as np

from vlx.data import demo
from vlx.errors import DataError
from vlx.evals import ranking

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "demo": demo.TEMPLATES,
    "simple": ("a photo of a {}.",),
}


def classifier(embed_texts, classes, templates) -> np.ndarray:
    """[C, E]: per class, the normalised mean of its normalised prompt embeddings."""
    prompts = [t.format(c) for c in classes for t in templates]
    emb = embed_texts(prompts).reshape(len(classes), len(templates), -1).mean(axis=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row, whether `labels` ranks among the k highest logits (ties: see `ranking.rank`)."""
    positive = np.arange(logits.shape[1])[None, :] == labels[:, None]
    return ranking.rank(logits, positive) < k


def run(eval_cfg, context, *, name: str, prefix: str) -> dict[str, float]:
    source = context.source(eval_cfg)
    if not getattr(source, "classes", ()):
        raise DataError(
            f"evals.{name}: zero-shot needs class names, and {eval_cfg.dataset} has none "
            "(build it with --classname-col, or use a labelled TFDS dataset)"
        )
    weights = classifier(context.embed_texts, source.classes, TEMPLATE_SETS[eval_cfg.templates])
    images, labels = context.image_embeddings(source, eval_cfg.batch_size)
    logits = images @ weights.T
    out = {
        f"{prefix}/top1": float(topk_correct(logits, labels, 1).mean()),
        f"{prefix}/top5": float(topk_correct(logits, labels, 5).mean()),
        f"{prefix}/num_examples": len(labels),
    }
    # Sources with classes never shown in training (the demo's held-out colour-shape pairs)
    # also report accuracy on those classes and on the rest.
    unseen = getattr(source, "unseen_labels", ())
    if len(unseen):
        sel = np.isin(labels, unseen)
        if sel.any():
            out[f"{prefix}/top1_unseen_pairs"] = float(
                topk_correct(logits[sel], labels[sel], 1).mean()
            )
            out[f"{prefix}/top1_seen_pairs"] = float(
                topk_correct(logits[~sel], labels[~sel], 1).mean()
            )
    return out
