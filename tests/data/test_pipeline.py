import subprocess
import sys
from pathlib import Path

import numpy as np

from vlx.data import pipeline, sources
from vlx.data.demo import DemoSource
from vlx.data.tokenizer import load


class Numbered:
    """20 distinct examples whose caption names their index."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return {"image": np.full((8, 8, 3), i, np.uint8), "captions": [f"a {i}"], "label": i}


def stream(source, workers=0, process=0, count=1, batch=4, seed=3):
    ds = pipeline.train_dataset(
        [source],
        [1.0],
        load("demo", 8),
        image_size=8,
        batch_size=batch,
        seed=seed,
        num_workers=workers,
        process_index=process,
        process_count=count,
    )
    return ds


def labels(batches):
    return [int(x) for b in batches for x in b["label"]]


def test_same_seed_same_batches_and_restore_resumes_exactly():
    it = iter(stream(Numbered()))
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    want = [next(it) for _ in range(4)]
    again = iter(stream(Numbered()))
    assert labels([next(again) for _ in range(3)]) == labels(first)
    restored = iter(stream(Numbered()))
    restored.set_state(state)
    got = [next(restored) for _ in range(4)]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
    assert sorted(labels(first + want[:2])) == list(range(20))  # one epoch: each once
    assert labels(want[2:]) != labels(first[:2])  # the next epoch is another permutation


def test_worker_processes_do_not_change_the_batches():
    a = iter(stream(Numbered(), workers=0))
    b = iter(stream(Numbered(), workers=2))
    try:
        assert labels([next(a) for _ in range(5)]) == labels([next(b) for _ in range(5)])
    finally:
        b.close() if hasattr(b, "close") else None


def test_processes_see_disjoint_slices_that_cover_the_data():
    seen = []
    for process in range(2):
        it = iter(stream(Numbered(), process=process, count=2, batch=5))
        seen.append(labels([next(it) for _ in range(2)]))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(20))


def test_weighted_mixture_draws_from_both_sources():
    demo = DemoSource(image_size=8, num_examples=100)
    ds = pipeline.train_dataset(
        [Numbered(), demo], [0.5, 0.5], load("demo", 8), image_size=8, batch_size=10, seed=0
    )
    it = iter(ds)
    caps = [next(it) for _ in range(4)]
    tokens = np.concatenate([b["tokens"] for b in caps])
    assert len({tuple(t) for t in tokens}) > 5
    assert sources.parse_mixture("demo=0.2,arrayrecord:/x=0.8") == [
        ("demo", 0.2),
        ("arrayrecord:/x", 0.8),
    ]
    assert sources.parse_mixture("demo") == [("demo", 1.0)]


LEAK_PROBE = """
import sys
from tests.data.test_pipeline import Numbered, stream

def consume(n):  # as `train.train` does: the last batches die with the frame, at the end
    it = iter(stream(Numbered(), workers=2))
    batches = [next(it) for _ in range(n)]
    it.close()
    return sum(len(b["label"]) for b in batches)

print(consume(int(sys.argv[1])))
"""


def test_worker_batches_leave_no_shared_memory_behind_at_exit():
    """Grain unlinks consumed batches' shared memory on a thread that exit used to cut short."""
    root = Path(__file__).resolve().parents[2]
    for n in (3, 12):
        run = subprocess.run(
            [sys.executable, "-c", LEAK_PROBE, str(n)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == [str(4 * n)]
        assert "leaked shared_memory" not in run.stderr, run.stderr
