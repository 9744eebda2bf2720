"""Demo: a tiny CLIP on built-in coloured-shape captions; about 2-3 minutes on a 2-core CPU.

  vlx train --config configs/demo.py --workdir runs/demo

Ends with zero-shot classification of held-out images into 24 "<colour> <shape>" classes,
4 of which never appear in training (reported separately as zeroshot/top1_held_out).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 128
    c.log_every = 25

    c.model = dict(
        image=dict(variant="mu/8", image_size=32, width=128, depth=3, mlp_dim=256, heads=4),
        text=dict(
            variant="mu",
            vocab_size=64,
            context_length=16,
            width=128,
            depth=2,
            mlp_dim=256,
            heads=4,
        ),
        embed_dim=64,
    )
    c.loss = dict(type="softmax")
    c.optim = dict(lr=2e-3, warmup_steps=50, weight_decay=0.05)
    c.data = dict(source="demo", tokenizer="demo")

    c.evals = dict(
        zeroshot=dict(
            type="zeroshot", dataset="demo", split="test", num_examples=1200, every_steps=500
        ),
    )
    return c
