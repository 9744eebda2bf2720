"""`vlx data inspect`: what a dataset holds, and a contact sheet of samples to look at."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlx.data import transforms


def summary(source, num_samples: int = 8) -> dict:
    """Counts, the build manifest's skip counts (if any) and the first samples' captions."""
    out = {"source": repr(source), "num_examples": len(source)}
    manifest = getattr(source, "manifest", None)
    if manifest:
        out.update(
            num_captions=manifest["num_captions"],
            num_skipped=manifest["num_skipped"],
            skipped=manifest["skipped"],
            shards=len(manifest["shards"]),
            tokenizer=manifest.get("tokenizer"),
        )
    classes = getattr(source, "classes", ())
    if classes:
        out["num_classes"] = len(classes)
    out["samples"] = [
        {"captions": source[i]["captions"], "label": int(source[i].get("label", -1))}
        for i in range(min(num_samples, len(source)))
    ]
    return out


def contact_sheet(source, path: str | Path, num: int = 16, thumb: int = 160) -> Path:
    """A PNG grid of the first `num` examples, each with its first caption under it."""
    cols = min(4, max(1, num))
    rows = -(-min(num, len(source)) // cols)
    text_h = 48
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    classes = getattr(source, "classes", ())
    for i in range(min(num, len(source))):
        example = source[i]
        x, y = (i % cols) * thumb, (i // cols) * (thumb + text_h)
        pil = transforms.to_pil(example["image"], thumb)
        image = transforms.resize_center_crop(pil, thumb, "bilinear")
        sheet.paste(Image.fromarray(np.asarray(image)), (x, y))
        caption = example["captions"][0] if example["captions"] else ""
        label = int(example.get("label", -1))
        if label >= 0 and classes:
            caption = f"[{classes[label]}] {caption}"
        lines = textwrap.wrap(caption, width=thumb // 6)[:3]
        draw.multiline_text((x + 2, y + thumb + 2), "\n".join(lines), fill="black", font=font)
    path = Path(path)
    sheet.save(path)
    return path
