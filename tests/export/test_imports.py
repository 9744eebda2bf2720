"""PyTorch -> vlx: init_from=hf:PATH / open_clip:PATH, whole models or one tower."""

import json
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from tests.export.helpers import trained, vlx_outputs
from tests.helpers import cli_train
from vlx import cli
from vlx.data import tokenizer as tokenizer_lib
from vlx.errors import ExportError
from vlx.export import imports

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def random_hf(tmp_path, kind: str):
    """A randomly initialised transformers model saved with the demo tokenizer."""
    tok = tokenizer_lib.load("demo", 8)
    text = dict(vocab_size=64, max_position_embeddings=8, eos_token_id=tok.eos_id, **SIZES)
    vision = dict(image_size=16, patch_size=8, **SIZES)
    torch.manual_seed(0)
    if kind == "clip":
        config = transformers.CLIPConfig(
            text_config={**text, "hidden_act": "gelu"},
            vision_config={**vision, "hidden_act": "gelu"},
            projection_dim=16,
        )
        model = transformers.CLIPModel(config)
    else:
        config = transformers.SiglipConfig(
            text_config={**text, "projection_size": 32}, vision_config=vision
        )
        model = transformers.SiglipModel(config)
    path = tmp_path / f"random_{kind}"
    model.eval().save_pretrained(path)
    tok.save(path)
    return model, path


def frozen_run(tmp_path, init_from: str, name: str = "run") -> str:
    """One step at learning rate 0 from `init_from`: the checkpoint holds the imported weights."""
    workdir = tmp_path / name
    code = cli_train(
        "tests/export/tiny.py",
        workdir,
        f"--config.init_from={init_from}",
        "--config.optim.lr=0.0",
        "--config.optim.grad_clip=0.0",
        "--config.total_steps=1",
        "--config.batch_size=16",
        "--config.evals={}",
    )
    assert code == 0
    return str(workdir)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_import_gives_the_pytorch_outputs_and_round_trips(tmp_path, kind):
    hf_model, path = random_hf(tmp_path, kind)
    workdir = frozen_run(tmp_path, f"hf:{path}")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["image"]["pool"] == ("map" if kind == "siglip" else "tok")
    assert saved["data"]["tokenizer"] == str(path)

    _, _, pixels, tokens, img, txt = vlx_outputs(workdir)
    with torch.no_grad():
        out = hf_model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)),
        )
    np.testing.assert_allclose(out.image_embeds.numpy(), img, atol=1e-5)
    np.testing.assert_allclose(out.text_embeds.numpy(), txt, atol=1e-5)

    out_dir = tmp_path / "back"
    assert cli.main(["export", "--workdir", workdir, "--format", "hf", "--out", str(out_dir)]) == 0
    original = {
        k: v.numpy() for k, v in hf_model.state_dict().items() if not k.endswith("position_ids")
    }
    back = load_file(str(out_dir / "model.safetensors"))
    assert set(back) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_lit_recipe_trains_a_text_tower_against_the_locked_imported_image_tower(tmp_path):
    """configs/lit.py: the image tower of a transformers CLIP (`#image`), trained at learning
    rate 1e-3, still gives the PyTorch model's embeddings; only the new text tower and the
    scale were trained, with the tokenizer of the config, not the checkpoint's."""
    hf_model, path = random_hf(tmp_path, "clip")
    text = dict(variant="mu", width=32, depth=2, mlp_dim=64, heads=2, vocab_size=64)
    code = cli_train(
        f"configs/lit.py:hf:{path}",
        tmp_path / "lit",
        *[f"--config.model.text.{k}={v}" for k, v in text.items()],
        "--config.model.text.context_length=8",
        "--config.model.dtype=float32",
        "--config.data.tokenizer=demo",
        "--config.batch_size=16",
        "--config.total_steps=3",
        "--config.optim.warmup_steps=0",
        "--config.evals={}",
    )
    assert code == 0
    _, t, pixels, _, img, _ = vlx_outputs(str(tmp_path / "lit"))
    np.testing.assert_allclose(img, image_features(hf_model, pixels), atol=1e-5)
    assert t.cfg.optim.freeze == "image.*" and t.cfg.optim.lr == 1e-3
    assert t.cfg.data.tokenizer == "demo"
    first = json.loads((tmp_path / "lit" / "metrics.jsonl").read_text().splitlines()[0])
    vision = sum(p.numel() for p in hf_model.vision_model.parameters())
    vision += hf_model.visual_projection.weight.numel()
    assert first["train/num_params"] - first["train/num_trained_params"] == vision


def image_features(hf_model, pixels) -> np.ndarray:
    """transformers' L2-normalised image embeddings of NHWC `pixels`."""
    with torch.no_grad():
        ref = hf_model.get_image_features(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)))
    ref = getattr(ref, "pooler_output", ref)
    return (ref / ref.norm(dim=-1, keepdim=True)).numpy()


def test_open_clip_round_trip(tmp_path):
    source = trained(tmp_path, "clip_quick_gelu")
    first, second = tmp_path / "oc1", tmp_path / "oc2"
    export = ["export", "--format", "open_clip", "--workdir"]
    assert cli.main([*export, source, "--out", str(first)]) == 0
    workdir = frozen_run(tmp_path, f"open_clip:{first}")
    assert cli.main([*export, workdir, "--out", str(second)]) == 0
    a = load_file(str(first / "open_clip_model.safetensors"))
    b = load_file(str(second / "open_clip_model.safetensors"))
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    _, _, _, _, img, _ = vlx_outputs(source)
    _, _, _, _, img2, _ = vlx_outputs(workdir)
    np.testing.assert_array_equal(img, img2)


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickles_are_never_unpickled(tmp_path):
    _, path = random_hf(tmp_path, "clip")
    (path / "model.safetensors").unlink()
    torch.save({"evil": _Payload()}, path / "pytorch_model.bin")
    with pytest.raises(ExportError, match="pytorch_model.bin: not a plain tensor file"):
        imports.read_weights(path, ("model.safetensors", "pytorch_model.bin"))


def test_a_pytorch_file_without_pytorch_is_a_one_line_error(tmp_path, monkeypatch):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # as where the torch extra is not installed
    with pytest.raises(ExportError) as e:
        imports.read_weights(tmp_path, ("model.safetensors", "pytorch_model.bin"))
    assert str(e.value) == (
        f"{tmp_path / 'pytorch_model.bin'} is a PyTorch file and PyTorch is not installed: "
        "install the torch extra (pip install 'vlx[torch]'), or save the weights as .safetensors"
    )
