import pytest
from flax import nnx

from tests.helpers import tiny_config
from vlx import optim, parallel, train
from vlx.errors import ConfigError


def trained_and_frozen(**updates) -> tuple[set, set]:
    cfg = tiny_config(**updates)
    tx, _ = optim.make(cfg.optim, cfg.total_steps)
    state = train.create_state(cfg, parallel.make_mesh(cfg.mesh), eos_id=2, tx=tx)

    def names(which) -> set[str]:
        flat = nnx.to_flat_state(nnx.state(state.arrays["model"], which))
        return {".".join(map(str, path)) for path, _ in flat}

    return names(state.trainable), names(nnx.Param) - names(state.trainable)


def test_freeze_takes_parameters_by_their_per_layer_names():
    """The README's patterns: a tower but its projection; with unrolled layers, a text tower
    (of 2 layers here) but its last layer, final LayerNorm and projection."""
    trained, frozen = trained_and_frozen(optim=dict(freeze=r"image\.(?!proj\.).*"))
    assert trained == {"image.proj.kernel", "logit_scale"} | {n for n in trained if "text." in n}
    assert "image.encoder.blocks.attn.query.kernel" in frozen and "image.cls" in frozen

    freeze = r"text\.(embed|posemb|encoder\.blocks\.0)\b.*"
    trained, frozen = trained_and_frozen(model=dict(scan=False), optim=dict(freeze=freeze))
    assert {n.split(".kernel")[0] for n in frozen if n.endswith("fc1.kernel")} == {
        "text.encoder.blocks.0.mlp.fc1"
    }
    assert {"text.embed.embedding", "text.posemb"} <= frozen
    assert {"text.encoder.blocks.1.mlp.fc1.kernel", "text.ln_final.scale"} <= trained
    assert not any(name.startswith("image.") for name in frozen)


@pytest.mark.parametrize(
    "updates,message",
    [
        (
            dict(optim=dict(freeze="img.*")),
            "optim.freeze='img.*' matches no parameter; names look like "
            "image.encoder.blocks.0.mlp.fc1.kernel",
        ),
        (dict(optim=dict(freeze=".*")), "optim.freeze='.*' freezes every parameter"),
        (
            dict(model=dict(scan=True), optim=dict(freeze=r"text\.encoder\.blocks\.1\..*")),
            r"optim.freeze='text\\.encoder\\.blocks\\.1\\..*' takes some layers of "
            "text.encoder.blocks.attn.key.bias but not all; with model.scan=true an encoder's "
            "layers are one array: freeze all of them, or set model.scan=false",
        ),
    ],
)
def test_freeze_that_cannot_be_honoured_is_a_one_line_error(updates, message):
    with pytest.raises(ConfigError) as e:
        trained_and_frozen(**updates)
    assert str(e.value).startswith(message)
