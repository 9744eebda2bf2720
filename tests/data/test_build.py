import json

import pytest

from tests.data import fixtures
from tests.helpers import cli_train, never
from vlx import cli, train
from vlx.data import build, records
from vlx.errors import DataError


def train_small(dataset, workdir, *overrides) -> int:
    """Two steps of configs/small.py, shrunk to one layer per tower, on `dataset`."""
    return cli_train(
        f"configs/small.py:{dataset}",
        str(workdir),
        "--config.data.tokenizer=demo",
        "--config.model.text.vocab_size=64",
        "--config.total_steps=2",
        "--config.batch_size=8",
        "--config.data.num_workers=0",
        "--config.model.image.depth=1",
        "--config.model.text.depth=1",
        *overrides,
    )


OPTIONS = build.BuildOptions(label_col="label", classname_col="name", workers=2, vocab_size=300)


def test_csv_build_skips_and_counts_bad_samples(tmp_path):
    table = fixtures.write_csv(tmp_path / "raw")
    manifest = build.build(table, tmp_path / "ds", OPTIONS)
    assert manifest["num_examples"] == 12
    assert manifest["num_captions"] == 13  # image 000 has two captions
    assert manifest["skipped"] == {
        "undecodable image": 2,
        "empty file": 1,
        "image too small": 1,
        "missing file": 1,
        "empty caption": 1,
    }
    assert manifest["classes"] == ["red", "green", "blue"]
    source = records.ArrayRecordSource(tmp_path / "ds")
    assert len(source) == 12 and source.classes == ("red", "green", "blue")
    first = source[0]
    assert first["captions"] == ["a red picture number 0", "a second caption for zero"]
    assert first["label"] == 0 and first["image"][:4] == b"\x89PNG"
    assert (tmp_path / "ds" / "tokenizer" / "tokenizer.json").exists()


def test_build_is_idempotent_and_never_leaves_a_partial_dataset(tmp_path):
    table = fixtures.write_csv(tmp_path / "raw")
    out = tmp_path / "ds"
    build.build(table, out, OPTIONS)
    again = build.build(table, out, build.BuildOptions(**{**vars(OPTIONS), "workers": 1}))
    assert again["reused"]
    with pytest.raises(DataError, match="built from other input or options"):
        build.build(table, out, build.BuildOptions(label_col="label", vocab_size=0))
    strict = build.BuildOptions(label_col="label", max_bad_fraction=0.1, vocab_size=0)
    with pytest.raises(DataError, match=r"6 of 18 examples .* are bad .*nothing was written"):
        build.build(table, tmp_path / "strict", strict)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "raw"]


def test_output_is_the_same_for_any_worker_count(tmp_path):
    table = fixtures.write_csv(tmp_path / "raw")
    a = build.build(table, tmp_path / "a", build.BuildOptions(workers=1, vocab_size=0))
    b = build.build(table, tmp_path / "b", build.BuildOptions(workers=2, vocab_size=0))
    assert a["fingerprint"] == b["fingerprint"]
    ra, rb = records.ArrayRecordSource(tmp_path / "a"), records.ArrayRecordSource(tmp_path / "b")
    assert [ra[i] for i in range(len(ra))] == [rb[i] for i in range(len(rb))]


def test_jsonl_with_caption_lists_and_missing_column(tmp_path):
    (tmp_path / "x.png").write_bytes(fixtures.image_bytes((1, 2, 3), "PNG"))
    table = tmp_path / "pairs.jsonl"
    table.write_text(json.dumps({"file": "x.png", "texts": ["one", "two"]}) + "\n")
    with pytest.raises(DataError, match=r"no column 'image' \(set --image-col\); columns: file"):
        build.build(table, tmp_path / "ds", build.BuildOptions(vocab_size=0))
    opts = build.BuildOptions(image_col="file", caption_col="texts", vocab_size=0, workers=1)
    manifest = build.build(table, tmp_path / "ds", opts)
    assert manifest["num_examples"] == 1 and manifest["num_captions"] == 2


def test_webdataset_tars(tmp_path):
    shards = fixtures.write_tars(tmp_path / "tars")
    manifest = build.build(shards, tmp_path / "ds", build.BuildOptions(vocab_size=0, workers=1))
    assert manifest["num_examples"] == 10
    assert manifest["skipped"] == {"undecodable image": 2}
    source = records.ArrayRecordSource(tmp_path / "ds")
    captions = {c for i in range(len(source)) for c in source[i]["captions"]}
    assert "green from json" in captions and "a red tile 00000000" in captions
    code = train_small(tmp_path / "ds", tmp_path / "run", "--config.evals={}")
    assert code == 0
    assert (tmp_path / "run" / "summary.json").exists()


def test_zeroshot_without_class_names_is_a_one_line_error(tmp_path, capsys):
    build.build(
        fixtures.write_tars(tmp_path / "tars"),
        tmp_path / "ds",
        build.BuildOptions(vocab_size=0, workers=1),
    )
    code = train_small(tmp_path / "ds", tmp_path / "run")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "zero-shot needs class names" in err


def test_not_a_dataset_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    """Training and evaluation data both, before the model is built and compiled (minutes for
    a large one), not at the first evaluation (hours into a run)."""

    monkeypatch.setattr(
        train, "create_state", never("the model was built before the data was opened")
    )
    (tmp_path / "empty").mkdir()
    nope = tmp_path / "nope"
    for override, message in [
        (f"data.source=arrayrecord:{nope}", f"dataset {nope} does not exist"),
        (f"data.source=arrayrecord:{tmp_path / 'empty'}", "is not a vlx dataset"),
        (f"evals.zeroshot.dataset=arrayrecord:{nope}", "evals.zeroshot.dataset: dataset"),
        ("evals.probe.train_split=val", "evals.probe.train_split: demo split 'val': choose"),
        ("evals.zeroshot.classnames=('a', 'b')", "2 class names for a dataset with 24"),
    ]:
        code = cli_train("configs/demo.py", str(tmp_path / "w"), f"--config.{override}")
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and err.startswith("vlx: error:") and message in err, err
    with pytest.raises(AssertionError, match="model was built before"):  # good data goes on
        cli_train("configs/demo.py", str(tmp_path / "w"))


def test_cli_build_inspect_and_train(tmp_path, capsys):
    table = fixtures.write_csv(tmp_path / "raw", n_good=24)
    out = tmp_path / "ds"
    assert (
        cli.main(
            [
                "data",
                "build",
                str(table),
                "--out",
                str(out),
                "--label-col",
                "label",
                "--classname-col",
                "name",
                "--vocab-size",
                "300",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert "24 examples" in capsys.readouterr().out
    sheet = tmp_path / "sheet.png"
    assert cli.main(["data", "inspect", str(out), "--num", "6", "--sheet", str(sheet)]) == 0
    printed = capsys.readouterr().out
    assert "num_examples: 24" in printed and "a red picture number 0" in printed
    assert sheet.stat().st_size > 1000
    workdir = tmp_path / "run"
    code = cli_train(
        "configs/demo.py",
        str(workdir),
        f"--config.data.source=arrayrecord:{out}",
        f"--config.data.tokenizer={out}/tokenizer",
        "--config.model.text.vocab_size=320",
        "--config.total_steps=3",
        "--config.log_every=1",
        "--config.batch_size=16",
        "--config.data.train_crop=random_resized",
        f"--config.evals.zeroshot.dataset=arrayrecord:{out}",
        "--config.evals.zeroshot.templates=simple",
        "--config.evals.zeroshot.every_steps=0",
    )
    assert code == 0
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train/loss" in r] == [1, 2, 3]
    assert next(r for r in lines if "zeroshot/top1" in r)["zeroshot/num_examples"] == 24


def test_corrupt_records_are_skipped_and_counted_while_training(tmp_path):
    """A record that passed the build but is corrupt on disk is replaced, and counted."""
    import numpy as np

    from vlx import train
    from vlx.data import pipeline
    from vlx.data.tokenizer import load

    table = fixtures.write_csv(tmp_path / "raw")
    out = tmp_path / "ds"
    build.build(table, out, build.BuildOptions(vocab_size=0, workers=1))
    source = records.ArrayRecordSource(out)

    class Damaged:
        def __len__(self):
            return len(source)

        def __getitem__(self, i):
            example = source[i]
            if i % 4 == 1:
                example = {**example, "image": b"\x00broken"}
            return example

        def __repr__(self):
            return "damaged"

    ds = pipeline.train_dataset(
        [Damaged()], [1.0], load("demo", 8), image_size=16, batch_size=6, seed=0
    )
    batches = [b for _, b in zip(range(4), iter(ds), strict=False)]
    skipped = sum(int(b["skipped"]) for b in batches)
    assert skipped > 0
    assert all(b["image"].shape == (6, 16, 16, 3) for b in batches)
    assert np.all([b["tokens"].shape == (6, 8) for b in batches])
    with pytest.raises(DataError, match="failed to load .* data.max_bad_fraction=0.01"):
        train.check_bad_fraction(skipped=20, delivered=1000, limit=0.01)
    train.check_bad_fraction(skipped=5, delivered=1000, limit=0.01)


def test_record_round_trip():
    record = records.encode("key", b"\x89PNG...", ["one", "two"], 3)
    assert records.decode(record) == {
        "key": "key",
        "image": b"\x89PNG...",
        "captions": ["one", "two"],
        "label": 3,
    }
