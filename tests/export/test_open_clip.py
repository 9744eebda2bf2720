"""vlx -> open_clip: the exported directory loads with open_clip and gives vlx's outputs."""

import numpy as np
import open_clip
import pytest
import torch

from tests.export.helpers import CAPTIONS, images, trained, vlx_outputs
from tests.helpers import never
from vlx import cli, train


@pytest.mark.parametrize("style", ["clip_quick_gelu", "clip_gelu"])
def test_open_clip_export_matches_vlx(tmp_path, style):
    workdir = trained(tmp_path, style)
    out = tmp_path / "oc"
    args = ["export", "--workdir", workdir, "--format", "open_clip", "--out", str(out)]
    assert cli.main(args) == 0
    model, _, pixels, tokens, img, txt = vlx_outputs(workdir)

    oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    oc.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    ids = tokenizer(CAPTIONS)
    np.testing.assert_array_equal(ids.numpy(), tokens)
    x = torch.stack([preprocess(p) for p in images()])
    np.testing.assert_allclose(x.numpy().transpose(0, 2, 3, 1), pixels, atol=1e-6)
    with torch.no_grad():
        image_emb = oc.encode_image(x, normalize=True).numpy()
        text_emb = oc.encode_text(ids, normalize=True).numpy()
        scale = oc.logit_scale.exp().item()
    np.testing.assert_allclose(image_emb, img, atol=1e-4)
    np.testing.assert_allclose(text_emb, txt, atol=1e-4)
    np.testing.assert_allclose(scale, float(model.scale_and_bias()[0]), rtol=1e-6)


def test_open_clip_refuses_siglip(tmp_path, capsys, monkeypatch):
    workdir = trained(tmp_path, "siglip")
    monkeypatch.setattr(train, "load_trained", never("restored before the format was checked"))
    out = tmp_path / "oc"
    args = ["export", "--workdir", workdir, "--format", "open_clip", "--out", str(out)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vlx: error: --format open_clip cannot represent: ")
    assert "model.image.class_token=False" in err and "model.image.pool='map'" in err
    assert not out.exists()
