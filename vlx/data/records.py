"""The on-disk dataset format written by `vlx data build` and read as a Grain source.

A dataset is a directory with `dataset.json` (the manifest) and ArrayRecord shards. Each record
is a msgpack map: `key` (str), `image` (the original encoded bytes), `captions` (list of str) and
`label` (int, -1 when unlabelled). The manifest's `classes` names the labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import grain
import msgpack

from vlx.errors import DataError

FORMAT = "vlx-arrayrecord-1"
MANIFEST = "dataset.json"


def encode(key: str, image: bytes, captions: list[str], label: int = -1) -> bytes:
    return msgpack.packb({"key": key, "image": image, "captions": captions, "label": label})


def decode(record: bytes) -> dict:
    return msgpack.unpackb(record)


def read_manifest(path: str | Path) -> dict:
    """The manifest of the dataset at `path`; a one-line error when it is not a vlx dataset."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset {path} does not exist; build one with `vlx data build`")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DataError(
            f"{path} is not a vlx dataset (no {MANIFEST}); build one with `vlx data build`"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{manifest_path} is not valid JSON ({e}); rebuild the dataset") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{manifest_path}: format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


class ArrayRecordSource:
    """Random access over a built dataset: `source[i]` is the decoded record (image still
    encoded). Picklable, so Grain worker processes can open it themselves."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        files = [str(self.path / shard["file"]) for shard in self.manifest["shards"]]
        self._data = grain.sources.ArrayRecordDataSource(files) if files else []
        self.classes = tuple(self.manifest.get("classes") or ())

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> dict:
        return decode(self._data[int(index)])

    def __repr__(self) -> str:
        return f"ArrayRecordSource({str(self.path)!r}, {len(self)} examples)"
