"""CLIP ViT-B/16: the recipe of configs/clip_vit_b32.py with 16 px patches (196 image tokens).

OpenAI CLIP architecture (149.6M parameters) with open_clip's training hyper-parameters.
On GPUs run it unrolled (`--config.model.scan=false`, as launch/gpu_host.sh does): on an H100
that trained 3,128 images/s at batch 768 (README, Performance).
"""

import pathlib
import runpy


def get_config():
    b32 = runpy.run_path(str(pathlib.Path(__file__).with_name("clip_vit_b32.py")))
    c = b32["get_config"]()
    c.model.image.variant = "B/16"
    c.data.tokenizer = "openai/clip-vit-base-patch16"
    return c
