import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from vlx.evals import linear_probe


def _blobs(n, classes=3, dims=5, seed=0, spread=0.8):
    centres = 2 * np.random.default_rng(42).normal(size=(classes, dims))
    rng = np.random.default_rng(seed)
    y = rng.integers(classes, size=n)
    return (centres[y] + spread * rng.normal(size=(n, dims))).astype(np.float32), y


def test_ridge_is_the_closed_form_least_squares_solution():
    x, y = _blobs(60)
    w, b = linear_probe.fit_ridge(x, y, 3, l2=0.1)
    # The gradient of mean |xW + b - T|^2 + l2 |W|^2 vanishes at the solution.
    t = np.eye(3)[y]
    residual = x @ w + b - t
    np.testing.assert_allclose(2 * x.T @ residual / len(x) + 2 * 0.1 * w, 0, atol=1e-10)
    np.testing.assert_allclose(residual.mean(axis=0), 0, atol=1e-10)


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_logistic_matches_scikit_learn(l2):
    x, y = _blobs(200)
    w, b = linear_probe.fit_logistic(x, y, 3, l2=l2)
    ref = LogisticRegression(C=1 / (l2 * len(x)), tol=1e-10, max_iter=10_000).fit(x, y)
    np.testing.assert_allclose(w, ref.coef_.T, atol=2e-3)
    np.testing.assert_allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), atol=2e-3)
    test_x, test_y = _blobs(300, seed=1)
    assert linear_probe.accuracy(w, b, test_x, test_y) == ref.score(test_x, test_y)


def test_probe_picks_l2_on_held_out_train_rows():
    x, y = _blobs(300, spread=1.5)
    test_x, test_y = _blobs(300, seed=1, spread=1.5)
    out = linear_probe.probe(
        x, y, test_x, test_y, num_classes=3, method="ridge", l2s=(1e-4, 1e4), val_fraction=0.2
    )
    assert out["l2"] == 1e-4  # a huge penalty predicts one class for everything
    assert out["accuracy"] > 0.6 and out["val_accuracy"] > 0.6
    w, b = linear_probe.fit_ridge(x, y, 3, 1e-4)  # refit on all training rows
    assert out["accuracy"] == linear_probe.accuracy(w, b, test_x, test_y)
    single = linear_probe.probe(
        x, y, test_x, test_y, num_classes=3, method="logistic", l2s=(1e-3,), val_fraction=0.2
    )
    assert single["l2"] == 1e-3 and np.isnan(single["val_accuracy"])
