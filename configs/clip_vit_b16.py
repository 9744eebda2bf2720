"""CLIP ViT-B/16 (OpenAI architecture) with open_clip's training hyper-parameters.

Architecture: ViT-B/16 at 224 px with class token, learned positions, pre-LN, QuickGELU, no
patch bias, bias-free projections to 512; 12-layer 512-wide causal text transformer pooled at
the end-of-text token; softmax (InfoNCE) loss with a learned temperature initialised at 0.07.
Optimiser as open_clip trains ViTs: AdamW (0.9, 0.98), eps 1e-6, weight decay 0.2, cosine.
Batch 32k as in the LAION runs: scale `batch_size` and `optim.lr` together for smaller setups.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.total_steps = 390_000  # ~12.8B samples seen, open_clip's LAION-400M 32-epoch budget
    c.batch_size = 32768
    c.log_every = 100

    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.model = dict(
        image=dict(
            variant="B/16",
            image_size=224,
            class_token=True,
            posemb="learn",
            pool="tok",
            pre_norm=True,
            patch_bias=False,
            act="quick_gelu",
            ln_eps=1e-5,
        ),
        text=dict(
            variant="M",
            vocab_size=49408,
            context_length=77,
            causal=True,
            pool="eos",
            act="quick_gelu",
            ln_eps=1e-5,
        ),
        embed_dim=512,
        dtype="bfloat16",
        param_dtype="float32",
        scan=True,
    )
    c.loss = dict(type="softmax", impl="gather")
    c.optim = dict(
        lr=5e-4,
        warmup_steps=10_000,
        schedule="cosine",
        b1=0.9,
        b2=0.98,
        eps=1e-6,
        weight_decay=0.2,
        grad_clip=1.0,
    )
    # The OpenAI BPE tokenizer; point this at a local copy on machines without network.
    c.data = dict(tokenizer="openai/clip-vit-base-patch16", normalize="clip")
    return c
