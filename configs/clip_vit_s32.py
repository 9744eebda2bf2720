"""CLIP ViT-S/32 as open_clip's `ViT-S-32`: the recipe of configs/clip_vit_b32.py with a
384-wide, 12-layer ViT (patch 32) and a 384-wide, 12-layer text tower, embed 384, exact GELU.

The architecture of the CPU benchmark against open_clip (README, Performance):
  vlx bench --config configs/clip_vit_s32.py --config.batch_size=64 --config.model.dtype=float32 \
    --config.model.scan=false
"""

import pathlib
import runpy


def get_config():
    b32 = runpy.run_path(str(pathlib.Path(__file__).with_name("clip_vit_b32.py")))
    c = b32["get_config"]()
    c.model.image.variant = "S/32"
    c.model.image.act = "gelu"
    c.model.text.variant = "S"
    c.model.text.act = "gelu"
    c.model.embed_dim = 384
    return c
