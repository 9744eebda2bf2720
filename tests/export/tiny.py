"""The tiny model of the export tests (sizes only; styles come from overrides)."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.log_every = 1
    c.model = dict(
        image=dict(variant="mu/8", image_size=16, width=32, depth=2, mlp_dim=64, heads=2),
        text=dict(
            variant="mu", vocab_size=64, context_length=8, width=32, depth=2, mlp_dim=64, heads=2
        ),
        embed_dim=16,
    )
    c.optim = dict(lr=1e-2, warmup_steps=0)
    c.data = dict(source="demo", tokenizer="demo")
    return c
