"""TFDS through `tfds.data_source`, with no TensorFlow installed: the fixture was prepared once
by tests/data/tfds_builder.py and committed."""

import json
from pathlib import Path

from tests.helpers import cli_train
from vlx import config
from vlx.data import sources

FIXTURE = Path(__file__).parent / "tfds_fixture"


def test_tfds_source_reads_images_captions_and_class_names():
    cfg = config.defaults()
    cfg.data.tfds.data_dir = str(FIXTURE)
    source = sources.build(
        "tfds:vlx_tiny_captions:train", split="x", image_size=32, data_cfg=cfg.data
    )
    assert len(source) == 12 and source.classes == ("red", "green", "blue")
    captions = [source[i]["captions"][0] for i in range(12)]
    assert captions.count("") == 1  # the planted bad sample
    example = next(source[i] for i in range(12) if source[i]["captions"][0])
    assert example["image"].shape == (32, 32, 3)
    name = source.classes[example["label"]]
    assert example["captions"][0].startswith(f"a {name} square")
    cfg.data.tfds.text_key = ""  # no captions: the class name is the caption
    test = sources.build("tfds:vlx_tiny_captions:test", split="x", image_size=32, data_cfg=cfg.data)
    for i in range(len(test)):
        assert test[i]["captions"] == [test.classes[test[i]["label"]]]


def test_train_and_zeroshot_on_tfds(tmp_path):
    workdir = tmp_path / "run"
    code = cli_train(
        "configs/demo.py",
        str(workdir),
        "--config.data.source=tfds:vlx_tiny_captions:train",
        f"--config.data.tfds.data_dir={FIXTURE}",
        "--config.data.tokenizer=demo",
        "--config.total_steps=2",
        "--config.log_every=1",
        "--config.batch_size=8",
        "--config.evals.zeroshot.dataset=tfds:vlx_tiny_captions:test",
        "--config.evals.zeroshot.templates=simple",
        "--config.evals.zeroshot.every_steps=0",
        "--config.evals.probe.dataset=tfds:vlx_tiny_captions",
        "--config.evals.probe.train_split=train",
        "--config.evals.probe.l2=(0.001,)",
    )
    assert code == 0
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert next(r for r in records if "zeroshot/top1" in r)["zeroshot/num_examples"] == 6
    probe = next(r for r in records if "probe/accuracy" in r)
    # The train example with an empty caption still has an image: a probe uses it.
    assert probe["probe/num_train"] == 12 and probe["probe/num_test"] == 6
    assert probe["probe/num_skipped"] == 0
    train_records = [r for r in records if "train/loss" in r]
    # 16 examples drawn from 12: the empty-caption one was met, skipped and counted.
    assert len(train_records) == 2 and train_records[-1]["data/skipped"] >= 1
