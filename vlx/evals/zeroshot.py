"""Zero-shot classification: images against an ensemble of prompt embeddings per class.

The classifier of a class is the normalised mean of its normalised prompt embeddings (CLIP's
prompt ensembling). With `prompt_weighting='zpe'` the mean is weighted per template, without
labels, after Allingham et al. 2023 ("A Simple Zero-shot Prompt Weighting Technique to Improve
Prompt Ensembling in Text-Image Models"): a template scores the mean over the eval images of its
highest class logit, each logit first reduced by that class's mean logit over reference images
(which removes the advantage of words that match every image); weights are a softmax of the
standardised scores divided by `zpe_temperature`.
"""

from __future__ import annotations

import numpy as np

from vlx.evals import prompts, ranking

CHUNK = 8192  # image rows per matrix product, to bound memory on large test sets


def prompt_embeddings(embed_texts, classes, templates) -> np.ndarray:
    """[T, C, E]: the normalised embedding of every template filled with every class name."""
    texts = [t.format(c) for t in templates for c in classes]
    emb = embed_texts(texts).reshape(len(templates), len(classes), -1)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def ensemble(per_prompt: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """[C, E]: per class, the normalised (weighted) mean over templates of [T, C, E]."""
    if weights is None:
        weights = np.full(per_prompt.shape[0], 1.0 / per_prompt.shape[0])
    emb = np.einsum("t,tce->ce", weights, per_prompt)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def zpe_scores(per_prompt: np.ndarray, images: np.ndarray, reference_mean: np.ndarray):
    """[T]: per template, mean over images of max over classes of (logit - reference logit).

    The mean logit of a class over reference images is the logit of their mean embedding, so
    `reference_mean` [E] is all that is needed of them."""
    scores = np.zeros(per_prompt.shape[0])
    for t, classes in enumerate(per_prompt):
        offset = classes @ reference_mean
        for s in range(0, len(images), CHUNK):
            logits = images[s : s + CHUNK] @ classes.T - offset
            scores[t] += logits.max(axis=1).sum()
    return scores / len(images)


def zpe_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = (scores - scores.mean()) / max(scores.std(), 1e-12) / temperature
    w = np.exp(z - z.max())
    return w / w.sum()


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row, whether `labels` ranks among the k highest logits (ties: see `ranking.rank`)."""
    positive = np.arange(logits.shape[1])[None, :] == labels[:, None]
    return ranking.rank(logits, positive) < k


def prepare(eval_cfg, sources, *, name: str):
    """(source, class names, templates, the ZPE reference source or None)."""
    key = f"evals.{name}"
    source = sources.get(eval_cfg, key=f"{key}.dataset")
    classes = prompts.classnames(eval_cfg.classnames, source, key=f"{key}.classnames")
    templates = prompts.templates(eval_cfg.templates, key=f"{key}.templates")
    reference = None
    if eval_cfg.prompt_weighting == "zpe" and eval_cfg.zpe_reference:
        reference = sources.get(
            eval_cfg,
            key=f"{key}.zpe_reference",
            split="train",
            dataset=eval_cfg.zpe_reference,
            num_examples=eval_cfg.zpe_reference_examples,
        )
    return source, classes, templates, reference


def run(eval_cfg, context, *, name: str, prefix: str) -> dict[str, float]:
    source, classes, templates, ref_source = prepare(eval_cfg, context.sources, name=name)
    per_prompt = prompt_embeddings(
        lambda texts: context.embed_texts(texts, eval_cfg.batch_size), classes, templates
    )
    data = context.embed_images(source, eval_cfg.batch_size, eval_cfg.num_examples)
    weights = None
    if eval_cfg.prompt_weighting == "zpe":
        reference = data.images
        if ref_source is not None:
            reference = context.embed_images(
                ref_source, eval_cfg.batch_size, eval_cfg.zpe_reference_examples
            ).images
        scores = zpe_scores(per_prompt, data.images, reference.mean(axis=0))
        weights = zpe_weights(scores, eval_cfg.zpe_temperature)
    classifier = ensemble(per_prompt, weights)
    logits = data.images @ classifier.T
    labels = data.labels
    out = {
        f"{prefix}/top1": float(topk_correct(logits, labels, 1).mean()),
        f"{prefix}/top5": float(topk_correct(logits, labels, 5).mean()),
        f"{prefix}/num_examples": len(labels),
        f"{prefix}/num_skipped": data.skipped,
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
    context.save(
        name,
        image_embeddings=data.images,
        labels=labels,
        index=data.index,
        classifier=classifier,
        classnames=np.asarray(classes),
        templates=np.asarray(templates),
        prompt_weights=weights
        if weights is not None
        else np.full(len(templates), 1 / len(templates)),
    )
    return out
