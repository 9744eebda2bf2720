"""Demo: a tiny CLIP on built-in coloured-shape captions; about 2-3 minutes on a 2-core CPU.

  vlx train --config configs/demo.py --workdir runs/demo

Ends with zero-shot classification of 1,200 held-out test images into 24 "<colour> <shape>"
classes (zeroshot/top1). 4 of the 24 colour-shape pairs never appear in training; accuracy on
images of those pairs alone is reported as zeroshot/top1_unseen_pairs. At the end, a linear probe
(logistic regression on frozen image embeddings, fit on 2,400 images of all 24 classes) reports
probe/accuracy on the same test images.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 128
    c.log_every = 25
    c.checkpoint = dict(every_steps=100, keep=2)

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
    c.data = dict(source="demo", tokenizer="demo", train_crop="center")

    c.evals = dict(
        zeroshot=dict(
            type="zeroshot", dataset="demo", split="test", num_examples=1200, every_steps=500
        ),
        probe=dict(
            type="linear_probe",
            dataset="demo",
            split="test",
            num_examples=1200,
            train_split="probe",
            train_examples=2400,
        ),
    )
    return c
