"""Tiny configs shared by the tests."""

from vlx import cli, config

TINY = dict(
    seed=0,
    total_steps=4,
    batch_size=16,
    log_every=2,
    model=dict(
        image=dict(variant="mu/8", image_size=16, width=32, depth=2, mlp_dim=64, heads=2),
        text=dict(
            variant="mu", vocab_size=64, context_length=8, width=32, depth=2, mlp_dim=64, heads=2
        ),
        embed_dim=16,
    ),
    optim=dict(lr=1e-2, warmup_steps=0, weight_decay=0.1),
    data=dict(source="demo", tokenizer="demo"),
)


def tiny_config(**updates):
    """The tiny config with nested `updates` (dicts merge key by key)."""
    cfg = config.from_dict(TINY)
    config.merge(cfg, updates, where="test")
    config.validate(cfg)
    return cfg


def cli_train(config_path, workdir, *overrides: str) -> int:
    """`vlx train --config CONFIG --workdir WORKDIR OVERRIDES...`, in this process."""
    return cli.main(["train", "--config", str(config_path), "--workdir", str(workdir), *overrides])
