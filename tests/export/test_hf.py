"""vlx -> transformers: the exported model gives vlx's embeddings and logits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from tests.export.helpers import CAPTIONS, images, trained, vlx_outputs
from tests.helpers import never
from tests.xla import cpu_flags
from vlx import cli, config, train
from vlx.errors import ExportError
from vlx.export import hf


def _processor(out):
    """AutoProcessor with PIL resampling, as vlx preprocesses (transformers 5 defaults to a
    torchvision backend, which resizes slightly differently)."""
    major = int(transformers.__version__.split(".")[0])
    return transformers.AutoProcessor.from_pretrained(
        out, **({"backend": "pil"} if major >= 5 else {})
    )


@pytest.mark.parametrize("style", ["clip_quick_gelu", "clip_gelu", "siglip"])
def test_hf_export_matches_vlx(tmp_path, style):
    workdir = trained(tmp_path, style)
    out = tmp_path / "hf"
    assert cli.main(["export", "--workdir", workdir, "--format", "hf", "--out", str(out)]) == 0
    model, t, pixels, tokens, img, txt = vlx_outputs(workdir)

    cls = transformers.SiglipModel if style == "siglip" else transformers.CLIPModel
    hf = cls.from_pretrained(out).eval()
    processor = _processor(out)
    inputs = processor(
        text=CAPTIONS,
        images=images(),
        return_tensors="pt",
        padding="max_length",
        max_length=t.cfg.model.text.context_length,
    )
    np.testing.assert_array_equal(inputs["input_ids"].numpy(), tokens)
    np.testing.assert_allclose(
        inputs["pixel_values"].numpy().transpose(0, 2, 3, 1), pixels, atol=1e-6
    )
    with torch.no_grad():
        result = hf(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
    np.testing.assert_allclose(result.image_embeds.numpy(), img, atol=1e-4)
    np.testing.assert_allclose(result.text_embeds.numpy(), txt, atol=1e-4)
    scale, bias = (np.asarray(x) for x in model.scale_and_bias())
    np.testing.assert_allclose(
        result.logits_per_image.numpy(), scale * img @ txt.T + bias, atol=1e-4
    )


def test_hf_refuses_what_it_cannot_hold_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    workdir = trained(tmp_path, "clip_gelu")
    monkeypatch.setattr(train, "load_trained", never("restored before the format was checked"))
    path = tmp_path / "clip_gelu" / "config.json"
    saved = json.loads(path.read_text())
    saved["model"]["image"]["pool"] = "gap"  # average pooling: no parameters change
    path.write_text(json.dumps(saved))
    out = tmp_path / "out"
    assert cli.main(["export", "--workdir", workdir, "--format", "hf", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vlx: error: --format hf (CLIPModel) cannot represent: ")
    assert "model.image.pool='gap' (CLIPModel pools the class token; needs 'tok')" in err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_hf_style_lists_every_problem():
    cfg = config.from_dict(
        {"model": {"image": {"pool": "tok", "patch_bias": True}, "logit_bias_init": -10.0}}
    )
    with pytest.raises(ExportError) as e:
        hf.style(cfg.model, eos_id=2)
    message = str(e.value)
    for part in ("patch_bias=True", "logit_bias_init=-10.0", "end-of-text id is 2"):
        assert part in message


def test_export_needs_no_pytorch(tmp_path):
    """The `torch` extra is for loading an export, not for writing one: in a process where
    torch and torchvision cannot be imported, `vlx export` writes the same bytes, without
    transformers' advice that PyTorch is missing."""
    workdir = trained(tmp_path, "clip_gelu")
    no_torch = (
        "import sys; sys.modules.update(torch=None, torchvision=None); "
        "from vlx import cli; sys.exit(cli.main(sys.argv[1:]))"
    )
    env = {**os.environ, "XLA_FLAGS": cpu_flags(8)}
    for fmt in ("hf", "open_clip"):
        args = ["export", "--workdir", workdir, "--format", fmt, "--out"]
        with_torch, without = tmp_path / f"{fmt}-torch", tmp_path / f"{fmt}-no-torch"
        assert cli.main([*args, str(with_torch)]) == 0
        cmd = [sys.executable, "-c", no_torch, *args, str(without)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "PyTorch was not found" not in done.stderr  # transformers' advice, for tokenizers
        assert "requires torchvision" not in done.stderr  # vlx asks for the PIL processor
        names = sorted(p.name for p in with_torch.iterdir())
        assert names == sorted(p.name for p in without.iterdir()) and names
        for name in names:
            assert (with_torch / name).read_bytes() == (without / name).read_bytes(), name
