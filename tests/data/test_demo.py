import numpy as np

from vlx.data import demo


def test_examples_are_deterministic_and_captions_name_the_class():
    src = demo.DemoSource(image_size=32)
    a, b = src[123], src[123]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["captions"] == b["captions"]
    assert a["image"].shape == (32, 32, 3) and a["image"].dtype == np.uint8
    for i in range(50):
        ex = src[i]
        color, shape = demo.CLASSES[ex["label"]].split()
        assert color in ex["captions"][0] and shape in ex["captions"][0]


def test_held_out_pairs_never_appear_in_training():
    train = demo.DemoSource("train", image_size=16)
    test = demo.DemoSource("test", image_size=16)
    held = set(train.unseen_labels)
    assert len(held) == 4
    assert not held & {train[i]["label"] for i in range(2000)}
    assert held <= {test[i]["label"] for i in range(2000)}
    assert not np.array_equal(train[0]["image"], test[0]["image"])
