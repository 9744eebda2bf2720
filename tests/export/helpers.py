"""Tiny trained workdirs in each exportable style, and vlx's own outputs to compare against."""

import math

import jax
import numpy as np
from flax import nnx
from PIL import Image

from tests.helpers import cli_train
from vlx import train
from vlx.data import transforms

STYLES = {
    "clip_quick_gelu": dict(image=dict(act="quick_gelu"), text=dict(act="quick_gelu")),
    "clip_gelu": dict(image=dict(act="gelu"), text=dict(act="gelu")),
    "siglip": dict(
        image=dict(
            class_token=False,
            pool="map",
            pre_norm=False,
            patch_bias=True,
            proj=False,
            act="gelu_tanh",
            ln_eps=1e-6,
        ),
        text=dict(causal=False, pool="last", proj_bias=True, act="gelu_tanh", ln_eps=1e-6),
        embed_dim=32,
        logit_scale_init=math.log(10.0),
        logit_bias_init=-10.0,
    ),
}
CAPTIONS = ["a red circle", "a large blue square at the top", "green"]


def overrides(model: dict, prefix: str = "model") -> list[str]:
    out = []
    for key, value in model.items():
        if isinstance(value, dict):
            out += overrides(value, f"{prefix}.{key}")
        else:
            out.append(f"--config.{prefix}.{key}={value}")
    return out


def trained(tmp_path, style: str) -> str:
    """A workdir with a 2-step run of the tiny model in `style`."""
    workdir = tmp_path / style
    args = [
        "--config.total_steps=2",
        "--config.batch_size=16",
        "--config.evals={}",
        "--config.model.image.variant=mu/8",
        "--config.model.image.image_size=16",
        "--config.model.text.context_length=8",
        *overrides(STYLES[style]),
    ]
    if style == "siglip":
        args.append("--config.loss.type=sigmoid")
    assert cli_train("tests/export/tiny.py", workdir, *args) == 0
    return str(workdir)


def images(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (20 + 7 * i, 25, 3), np.uint8)) for i in range(n)]


def vlx_outputs(workdir: str):
    """(model, trained, pixels [N, S, S, 3] normalised, tokens, image emb, text emb)."""
    t = train.load_trained(train.open_run(workdir))
    model = nnx.merge(t.state.graphdefs["model"], jax.device_get(t.model))
    size = t.cfg.model.image.image_size
    raw = np.stack(
        [transforms.resize_center_crop(p, size, t.cfg.data.interpolation) for p in images()]
    )
    pixels = np.asarray(transforms.normalize(raw, t.cfg.data.normalize))
    tokens, _ = t.tokenizer(CAPTIONS)
    return (
        model,
        t,
        pixels,
        tokens,
        np.asarray(model.encode_image(pixels)),
        np.asarray(model.encode_text(tokens)),
    )


def zero_shot_predictions_agree(workdir, tmp_path, num_images: int = 240) -> float:
    """Exports `workdir` (a demo run) to transformers and open_clip, classifies held-out demo
    images with each through its own processor/preprocessing, and checks that their predictions
    equal vlx's. Returns vlx's accuracy."""
    import open_clip
    import torch
    import transformers

    from vlx import cli
    from vlx.data import demo

    model, t, _, _, _, _ = vlx_outputs(workdir)
    source = demo.DemoSource(split="test", num_examples=num_images, image_size=32)
    pils = [Image.fromarray(source[i]["image"]) for i in range(num_images)]
    labels = np.array([source[i]["label"] for i in range(num_images)])
    prompts = [f"a photo of a {c}" for c in demo.CLASSES]
    size = t.cfg.model.image.image_size
    raw = np.stack([transforms.resize_center_crop(p, size, t.cfg.data.interpolation) for p in pils])
    tokens, _ = t.tokenizer(prompts)
    ours = np.argmax(
        np.asarray(model.encode_image(transforms.normalize(raw, t.cfg.data.normalize)))
        @ np.asarray(model.encode_text(tokens)).T,
        axis=1,
    )
    hf_dir, oc_dir = tmp_path / "demo-hf", tmp_path / "demo-openclip"
    for fmt, out in (("hf", hf_dir), ("open_clip", oc_dir)):
        assert (
            cli.main(["export", "--workdir", str(workdir), "--format", fmt, "--out", str(out)]) == 0
        )

    hf = transformers.CLIPModel.from_pretrained(hf_dir).eval()
    major = int(transformers.__version__.split(".")[0])
    processor = transformers.AutoProcessor.from_pretrained(
        hf_dir, **({"backend": "pil"} if major >= 5 else {})
    )
    inputs = processor(text=prompts, images=pils, return_tensors="pt", padding=True)
    with torch.no_grad():
        hf_pred = hf(**inputs).logits_per_image.argmax(dim=1).numpy()

    oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{oc_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{oc_dir}")
    with torch.no_grad():
        image_emb = oc.eval().encode_image(
            torch.stack([preprocess(p) for p in pils]), normalize=True
        )
        text_emb = oc.encode_text(tokenizer(prompts), normalize=True)
    oc_pred = (image_emb @ text_emb.T).argmax(dim=1).numpy()
    np.testing.assert_array_equal(hf_pred, ours)
    np.testing.assert_array_equal(oc_pred, ours)
    return float(np.mean(ours == labels))
