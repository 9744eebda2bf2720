"""`vlx data build`: image-caption files -> a checked ArrayRecord dataset with a manifest.

Inputs: a CSV / TSV / JSONL table of image paths (relative to the table) and captions, or a
directory of webdataset tar shards (`key.jpg|png|webp` + `key.txt` and/or `key.json`, optional
`key.cls`). Every image is fully decoded once here, so training never meets a corrupt file;
bad examples are skipped and counted by reason in the manifest. Output is written under a
temporary name and renamed into place: an interrupted build never looks complete.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from vlx.data import records
from vlx.data import tokenizer as tokenizer_lib
from vlx.errors import DataError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MAX_LISTED_SKIPS = 1000


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    image_col: str = "image"
    caption_col: str = "caption"
    label_col: str | None = None
    classname_col: str | None = None
    caption_sep: str | None = None  # several captions in one cell, e.g. "|"
    shard_size: int = 10_000
    workers: int = 0  # 0: one per core
    vocab_size: int = 8192  # of the BPE tokenizer trained on the captions; 0: none
    min_side: int = 8
    max_pixels: int = 89_478_485  # PIL's decompression-bomb limit
    max_bad_fraction: float = 0.5


@dataclasses.dataclass
class Candidate:
    key: str
    captions: list[str]
    label: int = -1
    path: str | None = None  # tables: read by the worker
    image: bytes | None = None  # tar shards: read by the main process


def build(
    input_path: str | Path,
    out: str | Path,
    options: BuildOptions = BuildOptions(),
    progress: Callable[[int, int | None], None] | None = None,
) -> dict:
    """Builds the dataset at `out`; returns its manifest (`reused` when already built)."""
    input_path, out = Path(input_path), Path(out)
    if not input_path.exists():
        raise DataError(f"input {input_path} does not exist")
    fingerprint = _fingerprint(input_path, options)
    if out.exists():
        try:
            manifest = records.read_manifest(out)
        except DataError:
            raise DataError(
                f"{out} exists and is not a vlx dataset; remove it or choose another --out"
            ) from None
        if manifest.get("fingerprint") == fingerprint:
            return {**manifest, "reused": True}
        raise DataError(
            f"{out} holds a dataset built from other input or options; remove it or choose "
            "another --out"
        )
    if input_path.is_dir():
        candidates, classes, total = _read_tars(input_path), None, None
    else:
        rows, classes = _read_table(input_path, options)
        candidates, total = iter(rows), len(rows)

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        manifest = _write(candidates, tmp, options, total, progress)
        manifest.update(
            format=records.FORMAT,
            source=str(input_path.resolve()),
            options=dataclasses.asdict(options),
            fingerprint=fingerprint,
            classes=classes,
            created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        seen = manifest["num_examples"] + manifest["num_skipped"]
        if seen == 0:
            raise DataError(f"{input_path} holds no examples")
        if manifest["num_skipped"] > options.max_bad_fraction * seen:
            top = ", ".join(f"{r}: {n}" for r, n in manifest["skipped"].items())
            raise DataError(
                f"{manifest['num_skipped']} of {seen} examples in {input_path} are bad ({top}), "
                f"more than max_bad_fraction={options.max_bad_fraction}; nothing was written"
            )
        (tmp / records.MANIFEST).write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _write(candidates, tmp: Path, options: BuildOptions, total, progress) -> dict:
    shards, skipped, skipped_list, captions = [], Counter(), [], []
    writer, count, n_done = None, 0, 0
    workers = options.workers or os.cpu_count() or 1

    def close():
        if writer is not None:
            writer.close()
            shards[-1]["num_examples"] = count

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) if workers > 1 else _InlinePool() as pool:
        for key, record, reason, caps in pool.imap(_Prepare(options), candidates, chunksize=16):
            n_done += 1
            if progress:
                progress(n_done, total)
            if record is None:
                skipped[reason.split(":")[0]] += 1
                if len(skipped_list) < MAX_LISTED_SKIPS:
                    skipped_list.append({"key": key, "reason": reason})
                continue
            if writer is None or count == options.shard_size:
                close()
                name = f"shard-{len(shards):05d}.array_record"
                shards.append({"file": name, "num_examples": 0})
                writer, count = ArrayRecordWriter(str(tmp / name), "group_size:1"), 0
            writer.write(record)
            count += 1
            captions.extend(caps)
        close()
    num_examples = sum(s["num_examples"] for s in shards)
    if options.vocab_size and captions:
        tok = tokenizer_lib.train_bpe(captions, options.vocab_size)
        tok.save_pretrained(str(tmp / "tokenizer"))
    return {
        "num_examples": num_examples,
        "num_captions": len(captions),
        "num_skipped": sum(skipped.values()),
        "skipped": dict(skipped),
        "skipped_examples": skipped_list,
        "shards": shards,
        "fields": {
            "key": "str",
            "image": "encoded bytes",
            "captions": "list[str]",
            "label": "int (-1: none)",
        },
        "tokenizer": "tokenizer" if options.vocab_size and captions else None,
    }


class _InlinePool:
    """The Pool interface without processes (workers=1)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, items, chunksize=1):
        return map(fn, items)


class _Prepare:
    """Worker: reads and checks one candidate -> (key, record or None, reason, captions)."""

    def __init__(self, options: BuildOptions):
        self.options = options

    def __call__(self, c: Candidate):
        captions = [t.strip() for t in c.captions if t and t.strip()]
        if not captions:
            return c.key, None, "empty caption", []
        data = c.image
        if data is None:
            try:
                data = Path(c.path).read_bytes()
            except FileNotFoundError:
                return c.key, None, f"missing file: {c.path}", []
            except OSError as e:
                return c.key, None, f"unreadable file: {e}", []
        problem = check_image(data, self.options)
        if problem:
            return c.key, None, problem, []
        return c.key, records.encode(c.key, data, captions, c.label), None, captions


def check_image(data: bytes, options: BuildOptions) -> str | None:
    """None if `data` decodes fully to an image of acceptable size; else the reason."""
    if not data:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > options.max_pixels:
                return f"image too large: {w}x{h}"
            if min(w, h) < options.min_side:
                return f"image too small: {w}x{h}"
            im.load()
    except Image.DecompressionBombError:
        return "image too large: decompression bomb"
    except Exception as e:  # PIL raises many types for bad bytes
        return f"undecodable image: {type(e).__name__}: {e}"
    return None


def _read_table(path: Path, options: BuildOptions) -> tuple[list[Candidate], list[str] | None]:
    suffix = path.suffix.lower()
    with open(path, newline="", encoding="utf-8") as f:
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in f if line.strip()]
        elif suffix in (".csv", ".tsv"):
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        else:
            raise DataError(f"{path}: unknown table type {suffix!r}; use .csv, .tsv or .jsonl")
    columns = set(rows[0]) if rows else set()
    for option in ("image_col", "caption_col", "label_col", "classname_col"):
        name = getattr(options, option)
        if name is not None and rows and name not in columns:
            flag = "--" + option.replace("_", "-")
            raise DataError(
                f"{path}: no column {name!r} (set {flag}); columns: {', '.join(sorted(columns))}"
            )
    classes = None
    names: dict[str, int] = {}
    if options.classname_col:
        if options.label_col:
            pairs = {int(r[options.label_col]): str(r[options.classname_col]) for r in rows}
            classes = [pairs.get(i, str(i)) for i in range(max(pairs) + 1)]
        else:
            classes = sorted({str(r[options.classname_col]) for r in rows})
            names = {name: i for i, name in enumerate(classes)}

    grouped: dict[str, Candidate] = {}
    for row in rows:
        image = str(row[options.image_col])
        value = row[options.caption_col]
        caps = value if isinstance(value, list) else [str(value or "")]
        if options.caption_sep:
            caps = [p for c in caps for p in c.split(options.caption_sep)]
        if options.label_col:
            label = int(row[options.label_col])
        elif names:
            label = names[str(row[options.classname_col])]
        else:
            label = -1
        if image in grouped:
            grouped[image].captions.extend(caps)
        else:
            resolved = Path(image) if Path(image).is_absolute() else path.parent / image
            grouped[image] = Candidate(key=image, captions=caps, label=label, path=str(resolved))
    return list(grouped.values()), classes


def _read_tars(directory: Path) -> Iterator[Candidate]:
    tars = sorted(directory.glob("*.tar"))
    if not tars:
        raise DataError(f"{directory} holds no .tar shards")
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            group: dict[str, bytes] = {}
            current = None
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, ext = member.name.rpartition(".")
                if current is not None and stem != current:
                    yield _from_group(current, group)
                    group = {}
                current = stem
                group[ext.lower()] = tar.extractfile(member).read()
            if current is not None:
                yield _from_group(current, group)


def _from_group(key: str, files: dict[str, bytes]) -> Candidate:
    image = next((files[e] for e in IMAGE_EXTS if e in files), None)
    captions, label = [], -1
    if "txt" in files:
        captions.append(files["txt"].decode("utf-8", errors="replace"))
    if "json" in files:
        try:
            meta = json.loads(files["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = {}
        if not captions:
            text = meta.get("caption", meta.get("text", ""))
            captions += text if isinstance(text, list) else [str(text)]
        label = int(meta.get("label", label))
    if "cls" in files:
        label = int(files["cls"].decode().strip())
    return Candidate(key=key, captions=captions, label=label, image=image if image else b"")


def _fingerprint(path: Path, options: BuildOptions) -> str:
    files = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    settings = {k: v for k, v in dataclasses.asdict(options).items() if k != "workers"}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
