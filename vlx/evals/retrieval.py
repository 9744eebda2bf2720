"""Image-text retrieval: recall@1/5/10 both ways, several captions per image (COCO style).

Image -> text: an image is retrieved at K if any of its captions is among the top K captions.
Text -> image: a caption is retrieved at K if its image is among the top K images.
"""

from __future__ import annotations

import numpy as np

from vlx.evals import ranking

KS = (1, 5, 10)


def recalls(image_emb: np.ndarray, text_emb: np.ndarray, owner: np.ndarray, chunk: int = 1024):
    """owner[j]: the image index of caption j. Returns {'i2t_r1': ..., 't2i_r1': ...}."""
    n = len(image_emb)
    i2t = np.concatenate(
        [
            ranking.rank(
                image_emb[s : s + chunk] @ text_emb.T,
                owner[None, :] == np.arange(s, min(s + chunk, n))[:, None],
            )
            for s in range(0, n, chunk)
        ]
    )
    t2i = np.concatenate(
        [
            ranking.rank(
                text_emb[s : s + chunk] @ image_emb.T,
                np.arange(n)[None, :] == owner[s : s + chunk, None],
            )
            for s in range(0, len(text_emb), chunk)
        ]
    )
    out = {}
    for k in KS:
        out[f"i2t_r{k}"] = float(np.mean(i2t < k))
        out[f"t2i_r{k}"] = float(np.mean(t2i < k))
    return out


def prepare(eval_cfg, sources, *, name: str):
    """The source to evaluate."""
    return sources.get(eval_cfg, key=f"evals.{name}.dataset")


def run(eval_cfg, context, *, name: str, prefix: str) -> dict[str, float]:
    source = prepare(eval_cfg, context.sources, name=name)
    data = context.embed_images(source, eval_cfg.batch_size, eval_cfg.num_examples)
    captions, owner = [], []
    for row, i in enumerate(data.index):
        for caption in source[int(i)]["captions"]:
            if caption and caption.strip():
                captions.append(caption)
                owner.append(row)
    texts = context.embed_texts(captions, eval_cfg.batch_size)
    owner = np.asarray(owner)
    out = {f"{prefix}/{k}": v for k, v in recalls(data.images, texts, owner).items()}
    out[f"{prefix}/num_images"] = len(data.images)
    out[f"{prefix}/num_captions"] = len(captions)
    out[f"{prefix}/num_skipped"] = data.skipped
    context.save(
        name,
        image_embeddings=data.images,
        text_embeddings=texts,
        caption_owner=owner,
        index=data.index,
    )
    return out
