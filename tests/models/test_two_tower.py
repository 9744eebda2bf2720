import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers import tiny_config
from vlx import config, parallel
from vlx.errors import ConfigError
from vlx.models import variants
from vlx.models.two_tower import TwoTower


def build(cfg, mesh=None, abstract=False):
    mesh = mesh or parallel.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    make = lambda: TwoTower(cfg.model, eos_id=2, rngs=nnx.Rngs(0))
    with jax.set_mesh(mesh), nnx.logical_axis_rules(parallel.RULES):
        return nnx.eval_shape(make) if abstract else make()


def count(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "name,expected",
    [("clip_vit_b32", 151_277_313), ("clip_vit_b16", 149_620_737), ("siglip_b16", 203_155_970)],
)
def test_published_parameter_counts(name, expected):
    """open_clip's ViT-B-32 / ViT-B-16 counts; HF SigLIP base-patch16-224 is ~203.16M."""
    model = build(config.load(f"configs/{name}.py"), abstract=True)
    assert count(model) == expected


@pytest.mark.parametrize("variant", variants.VARIANTS)
def test_every_variant_builds_abstractly(variant):
    cfg = config.from_dict(
        dict(model=dict(image=dict(variant=f"{variant}/14"), text=dict(variant=variant)))
    )
    model = build(cfg, abstract=True)
    width, depth, mlp, _ = variants._SIZES[variant]
    kernel = model.image.encoder.blocks.mlp.fc1.kernel
    assert kernel.shape == (depth, width, mlp)
    assert count(model) > 12 * depth * width**2


OPTIONS = [
    dict(image=dict(pool="tok"), text=dict(pool="eos", causal=True)),
    dict(image=dict(pool="gap", class_token=False, posemb="sincos2d"), text=dict(pool="last")),
    dict(
        image=dict(pool="map", class_token=False, pre_norm=False, patch_bias=True, act="gelu_tanh"),
        text=dict(pool="mean", causal=False, act="quick_gelu"),
    ),
    dict(image=dict(proj=False, proj_bias=True), text=dict(pool="first", proj_bias=True)),
]


@pytest.mark.parametrize("options", OPTIONS)
def test_tower_options_give_normalised_embeddings(options):
    if options["image"].get("proj") is False:
        options = dict(options, embed_dim=32)
    cfg = tiny_config(model=options)
    model = build(cfg)
    images = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
    tokens = jnp.array([[5, 6, 2, 0, 0, 0, 0, 0]] * 3)
    zimg, ztxt = model(images, tokens)
    assert zimg.shape == (3, cfg.model.embed_dim) and ztxt.shape == (3, cfg.model.embed_dim)
    np.testing.assert_allclose(jnp.linalg.norm(zimg, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(ztxt, axis=1), 1.0, rtol=1e-5)


def test_eos_pooling_with_causal_mask_ignores_padding_after_eos():
    model = build(tiny_config(model=dict(text=dict(pool="eos", causal=True))))
    a = jnp.array([[5, 6, 2, 0, 0, 0, 0, 0]])
    b = jnp.array([[5, 6, 2, 9, 9, 9, 9, 9]])
    c = jnp.array([[5, 7, 2, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(model.encode_text(a), model.encode_text(b), atol=1e-6)
    assert not np.allclose(model.encode_text(a), model.encode_text(c), atol=1e-4)


def test_scan_remat_and_bfloat16_agree_with_plain_float32():
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    tokens = jnp.array([[5, 6, 2, 0, 0, 0, 0, 0]] * 2)
    ref = build(tiny_config(model=dict(scan=True)))
    params = nnx.state(ref, nnx.Param)

    def loss(model):
        zimg, ztxt = model(images, tokens)
        return jnp.sum(zimg @ ztxt.T)

    value_and_grad = nnx.jit(nnx.value_and_grad(loss))
    want, want_grads = value_and_grad(ref)
    for remat in ("full", "dots"):
        model = build(tiny_config(model=dict(scan=True, remat=remat)))
        nnx.update(model, params)
        got, grads = value_and_grad(model)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), grads, want_grads
        )
    half = build(tiny_config(model=dict(dtype="bfloat16")))
    nnx.update(half, params)
    assert half.image.encoder.blocks.mlp.fc1.kernel.dtype == jnp.float32
    np.testing.assert_allclose(loss(half), want, rtol=0.05)


def test_unscanned_layers_are_a_list():
    model = build(tiny_config(model=dict(scan=False)))
    assert len(model.image.encoder.blocks) == 2
    assert model.image.encoder.blocks[0].mlp.fc1.kernel.shape == (32, 64)


def test_params_are_born_sharded():
    mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
    cfg = tiny_config()
    with jax.set_mesh(mesh), nnx.logical_axis_rules(parallel.RULES):
        abstract = nnx.eval_shape(lambda: TwoTower(cfg.model, eos_id=2, rngs=nnx.Rngs(0)))
        shardings = nnx.get_named_sharding(nnx.state(abstract), mesh)
        state = jax.jit(
            lambda: nnx.state(TwoTower(cfg.model, eos_id=2, rngs=nnx.Rngs(0))),
            out_shardings=shardings,
        )()
    fc1 = state["image"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"][...]
    assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert {s.data.shape for s in fc1.addressable_shards} == {(2, 16, 32)}


def test_bad_model_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="names no patch size"):
        build(tiny_config(model=dict(image=dict(variant="mu"))))
    with pytest.raises(ConfigError, match="image_size=20 is not a multiple of the patch size 8"):
        build(tiny_config(model=dict(image=dict(image_size=20))))
    with pytest.raises(ConfigError, match="width 30 is not divisible by heads 4"):
        build(tiny_config(model=dict(text=dict(width=30, heads=4))))
    with pytest.raises(ConfigError, match="needs model.image.class_token=True"):
        tiny_config(model=dict(image=dict(class_token=False, pool="tok")))


def test_patch_dropout_keeps_a_random_subset_in_training_only():
    cfg = tiny_config(model=dict(image=dict(patch_dropout=0.5, image_size=32, pool="gap")))
    ref_cfg = tiny_config(model=dict(image=dict(image_size=32, pool="gap")))
    mesh = parallel.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(parallel.RULES):
        model = TwoTower(cfg.model, eos_id=2, rngs=nnx.Rngs(params=0))
        ref = TwoTower(ref_cfg.model, eos_id=2, rngs=nnx.Rngs(params=0))
    assert model.image.keep == 8  # of 16 patches
    images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    # Evaluation keeps every patch: the same as a model without patch dropout.
    np.testing.assert_allclose(model.encode_image(images), ref.encode_image(images), atol=1e-6)
    a = model.encode_image(images, rng=jax.random.key(0))
    b = model.encode_image(images, rng=jax.random.key(0))
    c = model.encode_image(images, rng=jax.random.key(7))
    np.testing.assert_array_equal(a, b)  # deterministic given the key
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(model.encode_image(images))).max() > 1e-3
