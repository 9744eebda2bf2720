"""Small image-caption datasets written on the fly, with corrupt samples planted in them."""

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def image_bytes(color, fmt="JPEG", size=(64, 48), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(color) + rng.normal(0, 10, (*size[::-1], 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


BAD = {
    "truncated.jpg": image_bytes(COLORS["red"])[:200],
    "not_an_image.jpg": b"this is text, not a JPEG",
    "empty.png": b"",
    "sliver.png": image_bytes(COLORS["red"], "PNG", size=(4000, 3)),
}


def write_csv(root: Path, n_good: int = 12) -> Path:
    """n_good images (one with two captions), 4 corrupt files, a missing file, an empty caption."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    names = list(COLORS)
    for i in range(n_good):
        name = names[i % 3]
        fmt = "PNG" if i % 4 == 0 else "JPEG"
        path = images / f"{i:03d}.{fmt.lower()}"
        path.write_bytes(image_bytes(COLORS[name], fmt, seed=i))
        rows.append(
            dict(
                image=f"images/{path.name}",
                caption=f"a {name} picture number {i}",
                label=i % 3,
                name=name,
            )
        )
    rows.append(
        dict(image="images/000.png", caption="a second caption for zero", label=0, name="red")
    )
    for bad, data in BAD.items():
        (images / bad).write_bytes(data)
        rows.append(dict(image=f"images/{bad}", caption="bad", label=0, name="red"))
    rows.append(dict(image="images/missing.jpg", caption="gone", label=0, name="red"))
    (images / "nocap.jpg").write_bytes(image_bytes(COLORS["green"]))
    rows.append(dict(image="images/nocap.jpg", caption="", label=1, name="green"))
    path = root / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption", "label", "name"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_tars(root: Path, per_shard: int = 5, shards: int = 2) -> Path:
    """webdataset shards: key.jpg + key.txt (or key.json), one corrupt jpg per shard."""
    root.mkdir(parents=True)
    names = list(COLORS)
    for s in range(shards):
        with tarfile.open(root / f"shard-{s:04d}.tar", "w") as tar:

            def add(name, data):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

            for i in range(per_shard):
                key = f"{s:04d}{i:04d}"
                color = names[i % 3]
                add(f"{key}.jpg", image_bytes(COLORS[color], seed=s * 100 + i))
                if i % 2:
                    add(f"{key}.json", json.dumps({"caption": f"{color} from json"}).encode())
                else:
                    add(f"{key}.txt", f"a {color} tile {key}".encode())
            add(f"{s:04d}bad.jpg", b"\xff\xd8\xff garbage")
            add(f"{s:04d}bad.txt", b"a caption for a broken image")
    return root
