import subprocess
import sys

from vlx.metrics import Progress, read_jsonl

WRITE = """
import sys
from vlx.metrics import MetricWriter
writer = MetricWriter(sys.argv[1])
writer.write(1, {"train/loss": 2.5})
writer.close()
print(sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
"""


def test_metrics_reach_jsonl_and_tensorboard_without_loading_torch(tmp_path):
    """tensorboardX would import PyTorch (installed here) at every run's start; vlx hides it."""
    done = subprocess.run(
        [sys.executable, "-c", WRITE, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "train/loss": 2.5}]
    (events,) = (tmp_path / "tensorboard").iterdir()
    assert events.name.startswith("events.out.tfevents") and events.stat().st_size > 0


def test_progress_bar_shows_loss_throughput_mfu_and_data_wait(capsys):
    progress = Progress(total=10, enabled=True)
    metrics = {
        "train/loss": 2.0,
        "train/grad_norm": 3.0,
        "train/images_per_sec": 1234.5,
        "train/mfu": 0.4,
        "data/wait_fraction": 0.125,
    }
    progress.update(5, metrics)
    progress.bar.refresh()
    progress.close()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "5/10" in line
    for shown in ("loss=2", "images_per_sec=1234", "mfu=0.4", "wait_fraction=0.125"):
        assert shown in line, line
    assert "grad_norm" not in line
