"""LiT, locked-image text tuning (Zhai et al., 2022): a pretrained image tower, locked, and a
new text tower trained to read it.

  vlx train --config configs/lit.py:hf:/models/clip-vit-base-patch16 --workdir runs/lit \
      --config.data.source=arrayrecord:data/pairs

The argument names the image tower's weights: `hf:PATH` (a transformers CLIP or SigLIP
directory), `open_clip:PATH`, or a vlx workdir or checkpoint. Its architecture and the
embedding size are read from there.
`optim.freeze` locks the whole image tower, projection included: no gradients, no optimizer
state, and no backward pass through it, so a step costs the image tower's forward and the text
tower's training. The text tower is CLIP's (12 layers, width 512, OpenAI BPE). Learning rate,
schedule, warmup (3% of the steps), clipping, temperature (10) and the weight-decay value 0.01
as in big_vision's LiT config (`lit_coco.py`; vlx's AdamW scales the decay by the learning
rate), whose batch and length fit COCO; scale both to your data.
"""

import math
import pathlib
import runpy


def get_config(image_tower: str = ""):
    if not image_tower:
        raise ValueError(
            "name the image tower's weights after the file: configs/lit.py:hf:PATH, "
            "configs/lit.py:open_clip:PATH or configs/lit.py:WORKDIR (a vlx run)"
        )
    b16 = runpy.run_path(str(pathlib.Path(__file__).with_name("clip_vit_b16.py")))
    c = b16["get_config"]()  # the text tower and tokenizer; the image tower comes from the weights
    c.init_from = f"{image_tower}#image"
    c.total_steps = 5_000
    c.batch_size = 4096
    c.model.logit_scale_init = math.log(10.0)
    c.optim.update(
        lr=1e-3,
        warmup_steps=max(int(0.03 * c.total_steps), 100),
        weight_decay=0.01,
        freeze="image.*",
    )
    return c
