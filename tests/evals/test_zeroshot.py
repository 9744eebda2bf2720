import numpy as np
import pytest

from vlx.data import pipeline
from vlx.errors import ConfigError, DataError
from vlx.evals import prompts, zeroshot


def test_topk_by_hand_with_ties():
    logits = np.array([[0.9, 0.1, 0.0], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0]])
    labels = np.array([0, 1, 1])
    assert list(zeroshot.topk_correct(logits, labels, 1)) == [True, False, False]
    # Row 2: class 0 ties with class 1 and wins (lower index), as argmax would.
    assert list(zeroshot.topk_correct(logits, labels, 2)) == [True, False, True]
    assert list(zeroshot.topk_correct(logits, labels, 3)) == [True, True, True]
    assert zeroshot.topk_correct(logits, labels, 5).all()


TABLE = {"a x": [2.0, 0.0], "the x": [0.0, 3.0], "a y": [-1.0, 0.0], "the y": [-5.0, 0.0]}


def _embed(texts):
    return np.array([TABLE[t] for t in texts])


def test_ensemble_averages_normalised_prompt_embeddings():
    per_prompt = zeroshot.prompt_embeddings(_embed, ["x", "y"], ["a {}", "the {}"])
    assert per_prompt.shape == (2, 2, 2)  # [templates, classes, dims]
    np.testing.assert_allclose(zeroshot.ensemble(per_prompt), [[2**-0.5, 2**-0.5], [-1.0, 0.0]])
    # Weighted: template "the {}" alone.
    np.testing.assert_allclose(
        zeroshot.ensemble(per_prompt, np.array([0.0, 1.0])), [[0.0, 1.0], [-1.0, 0.0]]
    )


def test_zpe_scores_by_hand():
    # 2 templates x 2 classes in 2-D. Template 0 separates the images; template 1 maps both
    # classes near the mean image, so its centred max-logit is low.
    per_prompt = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.8, 0.6]]])
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    mean = images.mean(axis=0)  # [0.5, 0.5]
    scores = zeroshot.zpe_scores(per_prompt, images, mean)
    # Template 0: offsets [0.5, 0.5]; logits - offset: [[0.5, -0.5], [-0.5, 0.5]] -> max 0.5.
    # Template 1: offsets [0.7, 0.7]; image 0: [-0.1, 0.1] -> 0.1; image 1: [0.1, -0.1] -> 0.1.
    np.testing.assert_allclose(scores, [0.5, 0.1])
    weights = zeroshot.zpe_weights(scores, temperature=1.0)
    # Standardised scores are [1, -1]: softmax -> [e^2, 1] / (e^2 + 1).
    np.testing.assert_allclose(weights, [np.e**2 / (np.e**2 + 1), 1 / (np.e**2 + 1)])
    np.testing.assert_allclose(zeroshot.zpe_weights(np.array([0.3, 0.3, 0.3]), 1.0), [1 / 3] * 3)


def test_builtin_template_sets():
    sets = prompts.template_sets()
    assert len(sets["clip_imagenet"]) == 80 and len(set(sets["clip_imagenet"])) == 80
    assert set(sets["clip_imagenet_short"]) < set(sets["clip_imagenet"])
    assert len(sets["clip_imagenet_short"]) == 7
    assert all(t.count("{}") == 1 for s in sets.values() for t in s)
    assert prompts.templates(("a {} here.",), key="k") == ("a {} here.",)
    with pytest.raises(ConfigError, match="k: every template needs exactly one"):
        prompts.templates(("no slot",), key="k")
    with pytest.raises(ConfigError, match="not a template set; choose one of clip_imagenet"):
        prompts.templates("clip", key="k")


def test_class_names_are_canonicalised():
    assert prompts.canonical(("n01440764", "n15075141")) == ("tench", "toilet paper")
    assert prompts.canonical(("aquarium_fish", "  maple_tree ")) == ("aquarium fish", "maple tree")
    # Not all WordNet IDs known: left as they are, not half-translated.
    assert prompts.canonical(("n01440764", "n99999999")) == ("n01440764", "n99999999")


class _Labelled:
    classes = ("cat", "dog")

    def __repr__(self):
        return "pets"


def test_class_name_settings():
    source = _Labelled()
    assert prompts.classnames("", source, key="k") == ("cat", "dog")
    assert prompts.classnames(("kitten", "puppy"), source, key="k") == ("kitten", "puppy")
    with pytest.raises(DataError, match="k: 1000 class names for a dataset with 2 classes"):
        prompts.classnames("imagenet", source, key="k")
    with pytest.raises(DataError, match="k: zero-shot needs class names and .* has none"):
        prompts.classnames("", object(), key="k")
    names = prompts.classnames("imagenet", object(), key="k")
    assert len(names) == 1000 and names[0] == "tench" and names[207] == "Golden Retriever"


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
