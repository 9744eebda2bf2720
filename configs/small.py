"""A small CLIP for your own dataset, trainable on a CPU or one GPU.

  vlx data build pairs.csv --out data/pets --label-col label --classname-col name
  vlx train --config configs/small.py:data/pets --workdir runs/pets

The argument is a dataset built by `vlx data build` (its tokenizer is used); zero-shot accuracy
on it is reported at the end. Evaluate on a separate split with
--config.evals.zeroshot.dataset=arrayrecord:data/pets-test. ViT at 64 px with 8 px patches
(64 tokens), 6 layers of width 256; text 4 layers, 32 tokens.
"""

import ml_collections


def get_config(dataset="data/train"):
    c = ml_collections.ConfigDict()
    c.total_steps = 2000
    c.batch_size = 64
    c.log_every = 50

    c.model = dict(
        image=dict(variant="S/8", image_size=64, width=256, depth=6, mlp_dim=1024, heads=4),
        text=dict(
            variant="S",
            vocab_size=8192,
            context_length=32,
            width=256,
            depth=4,
            mlp_dim=1024,
            heads=4,
        ),
        embed_dim=256,
    )
    c.loss = dict(type="softmax")
    c.optim = dict(lr=1e-3, warmup_steps=100, weight_decay=0.1)
    c.data = dict(
        source=f"arrayrecord:{dataset}",
        tokenizer=f"{dataset}/tokenizer",
        train_crop="random_resized",
        crop_scale=(0.8, 1.0),
        num_workers=1,
    )
    c.evals = dict(
        zeroshot=dict(
            type="zeroshot",
            dataset=f"arrayrecord:{dataset}",
            templates="simple",
            num_examples=5000,
            every_steps=500,
        ),
    )
    return c
