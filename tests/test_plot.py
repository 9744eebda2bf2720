import json

import pytest

from vlx import plot
from vlx.errors import VlxError


def test_series_keep_the_last_value_of_a_step_and_skip_non_numbers():
    records = [
        {"step": 10, "train/loss": 2.0, "note": "x"},
        {"step": 5, "train/loss": 3.0},
        {"step": 10, "train/loss": 1.5, "zs/top1": 0.5, "zs/num_examples": 100},
    ]
    data = plot.series(records)
    assert data["train/loss"] == ([5, 10], [3.0, 1.5])
    assert "note" not in data
    assert plot.eval_panels(data) == [("zs", ("zs/top1",), False)]


def test_plot_writes_pngs(tmp_path):
    lines = [{"step": s, "train/loss": 3.0 / s, "train/lr": 0.1} for s in range(1, 30)]
    lines.append({"step": 29, "probe/accuracy": 0.7, "probe/l2": 1e-4})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    paths = plot.plot_workdir(tmp_path)
    assert [p.name for p in paths] == ["training.png", "eval.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_plot_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(VlxError, match="metrics.jsonl does not exist"):
        plot.plot_workdir(tmp_path)
