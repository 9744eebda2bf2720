import numpy as np

from vlx.evals import ranking, retrieval


def test_recalls_by_hand_with_several_captions_per_image():
    # 3 images, 4 captions: captions 0, 1 belong to image 0; caption 2 to image 1; 3 to image 2.
    images = np.eye(3)
    texts = np.array(
        [
            [0.1, 0.9, 0.0],  # image 0's, but closer to image 1
            [0.8, 0.2, 0.0],  # image 0's
            [0.0, 0.5, 0.5],  # image 1's, tied between images 1 and 2
            [0.0, 0.0, 1.0],
        ]
    )  # image 2's
    owner = np.array([0, 0, 1, 2])
    r = retrieval.recalls(images, texts, owner, chunk=2)
    # i2t: image 0's best caption (1, 0.8) is first; image 1: caption 0 (0.9) beats caption 2
    # (0.5); image 2: caption 3 first. -> R@1 = 2/3, R@5 = 1.
    assert r["i2t_r1"] == 2 / 3 and r["i2t_r5"] == 1.0
    # t2i: caption 0 -> image 1 first (miss at 1); caption 1 -> image 0; caption 2 ties images
    # 1 and 2, the lower index (1) wins: hit; caption 3 -> image 2. -> R@1 = 3/4.
    assert r["t2i_r1"] == 3 / 4 and r["t2i_r10"] == 1.0


def test_rank_tie_rule():
    scores = np.array([[0.5, 0.5, 0.1], [0.5, 0.5, 0.1]])
    positive = np.array([[False, True, False], [True, False, False]])
    assert list(ranking.rank(scores, positive)) == [1, 0]
