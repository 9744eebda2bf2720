import numpy as np

from vlx.data import pipeline
from vlx.evals import zeroshot


def test_topk_by_hand_with_ties():
    logits = np.array([[0.9, 0.1, 0.0], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0]])
    labels = np.array([0, 1, 1])
    assert list(zeroshot.topk_correct(logits, labels, 1)) == [True, False, False]
    # Row 2: class 0 ties with class 1 and wins (lower index), as argmax would.
    assert list(zeroshot.topk_correct(logits, labels, 2)) == [True, False, True]
    assert list(zeroshot.topk_correct(logits, labels, 3)) == [True, True, True]
    assert zeroshot.topk_correct(logits, labels, 5).all()


def test_classifier_averages_normalised_prompt_embeddings():
    table = {"a x": [1.0, 0.0], "the x": [0.0, 1.0], "a y": [-1.0, 0.0], "the y": [-1.0, 0.0]}
    weights = zeroshot.classifier(
        lambda prompts: np.array([table[p] for p in prompts]), ["x", "y"], ["a {}", "the {}"]
    )
    np.testing.assert_allclose(weights, [[2**-0.5, 2**-0.5], [-1.0, 0.0]])


def test_eval_batches_cover_every_example_once_with_padding():
    source = [{"image": np.full((2, 2, 3), i, np.uint8), "label": i} for i in range(10)]
    seen = []
    for process in range(2):
        for batch in pipeline.eval_batches(
            source, None, batch_size=4, process_index=process, process_count=2
        ):
            assert batch["image"].shape == (4, 2, 2, 3)
            seen += list(batch["label"][batch["mask"] > 0])
    assert sorted(seen) == list(range(10))
