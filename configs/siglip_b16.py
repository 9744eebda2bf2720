"""SigLIP ViT-B/16 at 224 px: MAP pooling and the pairwise sigmoid loss (Zhai et al., 2023).

Architecture as released: no class token, learned positions, no pre-LN, patch bias, tanh-GELU,
LayerNorm eps 1e-6, multihead attention pooling, no image projection (embed = width 768);
bidirectional 12-layer 768-wide text transformer pooled at the last token, projected with bias.
Logit scale initialised at log 10 and bias at -10. big_vision's recipe: AdamW with b2 0.95,
lr 1e-3, weight decay 1e-4, batch 32k. `loss.impl='ring'` keeps the loss's memory at
O(B_local^2) per device for very large batches.
"""

import math

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.total_steps = 107_000  # ~3.5B examples seen at batch 32k
    c.batch_size = 32768
    c.log_every = 100

    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.model = dict(
        image=dict(
            variant="B/16",
            image_size=224,
            class_token=False,
            posemb="learn",
            pool="map",
            pre_norm=False,
            patch_bias=True,
            proj=False,
            act="gelu_tanh",
            ln_eps=1e-6,
        ),
        text=dict(
            variant="B",
            vocab_size=32000,
            context_length=64,
            causal=False,
            pool="last",
            proj=True,
            proj_bias=True,
            act="gelu_tanh",
            ln_eps=1e-6,
        ),
        embed_dim=768,
        logit_scale_init=math.log(10.0),
        logit_bias_init=-10.0,
        dtype="bfloat16",
        param_dtype="float32",
        scan=True,
    )
    c.loss = dict(type="sigmoid", impl="gather")
    c.optim = dict(
        lr=1e-3,
        warmup_steps=5_000,
        schedule="cosine",
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=1e-4,
        grad_clip=1.0,
    )
    # SigLIP's SentencePiece tokenizer; point this at a local copy on machines without network.
    c.data = dict(tokenizer="google/siglip-base-patch16-224", normalize="minus_one_to_one")
    return c
