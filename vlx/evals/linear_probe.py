"""Linear probes on frozen image embeddings: accuracy of a linear classifier fit on a train split.

Two classifiers, each with a bias and an L2 penalty `l2` on its weights only:
- `logistic`: multinomial logistic regression minimising mean cross-entropy + l2/2 * |W|^2,
  solved with L-BFGS (optax) to convergence; the same optimum as scikit-learn's
  `LogisticRegression(C=1 / (l2 * num_train))`.
- `ridge`: least squares on one-hot targets, mean squared error + l2 * |W|^2, in closed form
  (big_vision's few-shot probe).
When `l2` lists several values, each is fit on the train split minus a held-out `val_fraction`
and the best on the held-out part is refit on the whole train split.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlx.errors import DataError

MAX_ITERS = 1000
TOLERANCE = 1e-6  # on the gradient norm


def fit_ridge(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float):
    """(W [E, C], b [C]) minimising mean |x W + b - onehot(y)|^2 + l2 |W|^2, in float64."""
    x = x.astype(np.float64)
    targets = np.eye(num_classes)[y]
    mean_x, mean_t = x.mean(axis=0), targets.mean(axis=0)
    xc = x - mean_x
    gram = xc.T @ xc / len(x) + l2 * np.eye(x.shape[1])
    w = np.linalg.solve(gram, xc.T @ (targets - mean_t) / len(x))
    return w, mean_t - mean_x @ w


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float):
    """(W [E, C], b [C]) minimising mean cross-entropy + l2/2 |W|^2 (L-BFGS)."""
    w, b = _lbfgs(jnp.asarray(x, jnp.float32), jnp.asarray(y), num_classes, l2)
    return np.asarray(w, np.float64), np.asarray(b, np.float64)


@functools.partial(jax.jit, static_argnums=2)
def _lbfgs(x, y, num_classes, l2):
    def loss(params):
        logits = x @ params["w"] + params["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + 0.5 * l2 * jnp.sum(params["w"] ** 2)

    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    def running(carry):
        _, state = carry
        count = optax.tree.get(state, "count")
        gnorm = optax.tree.norm(optax.tree.get(state, "grad"))
        return (count == 0) | ((count < MAX_ITERS) & (gnorm >= TOLERANCE))

    params, _ = jax.lax.while_loop(running, step, (params, opt.init(params)))
    return params["w"], params["b"]


FIT = {"logistic": fit_logistic, "ridge": fit_ridge}


def accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(x.astype(np.float64) @ w + b, axis=1) == y))


def probe(
    train_x, train_y, test_x, test_y, *, num_classes: int, method: str, l2s, val_fraction: float
) -> dict[str, float]:
    """Test accuracy of `method` fit on the train split, with l2 chosen on held-out train rows."""
    fit = FIT[method]
    l2s = tuple(l2s)
    best, val_accuracy = l2s[0], float("nan")
    if len(l2s) > 1:
        order = np.random.default_rng(0).permutation(len(train_x))
        n_val = max(1, int(round(val_fraction * len(train_x))))
        val, fit_rows = order[:n_val], order[n_val:]
        scores = [
            accuracy(
                *fit(train_x[fit_rows], train_y[fit_rows], num_classes, l2),
                train_x[val],
                train_y[val],
            )
            for l2 in l2s
        ]
        i = int(np.argmax(scores))  # the first (smallest listed) l2 wins ties
        best, val_accuracy = l2s[i], scores[i]
    w, b = fit(train_x, train_y, num_classes, best)
    return {
        "accuracy": accuracy(w, b, test_x, test_y),
        "train_accuracy": accuracy(w, b, train_x, train_y),
        "val_accuracy": val_accuracy,
        "l2": float(best),
    }


def prepare(eval_cfg, sources, *, name: str):
    """(test source, train source)."""
    key = f"evals.{name}"
    test = sources.get(eval_cfg, key=f"{key}.dataset")
    train = sources.get(
        eval_cfg,
        key=f"{key}.train_dataset" if eval_cfg.train_dataset else f"{key}.train_split",
        split=eval_cfg.train_split,
        dataset=eval_cfg.train_dataset,
        num_examples=eval_cfg.train_examples,
    )
    return test, train


def run(eval_cfg, context, *, name: str, prefix: str) -> dict[str, float]:
    key = f"evals.{name}"
    test_source, train_source = prepare(eval_cfg, context.sources, name=name)
    test = context.embed_images(test_source, eval_cfg.batch_size, eval_cfg.num_examples)
    train = context.embed_images(train_source, eval_cfg.batch_size, eval_cfg.train_examples)
    for split, data in (("train", train), ("test", test)):
        if len(data.labels) == 0 or (data.labels < 0).any():
            raise DataError(
                f"{key}: the {split} data has unlabelled examples; a probe needs labels"
            )
    num_classes = max(
        len(getattr(test_source, "classes", ()) or ()),
        int(train.labels.max()) + 1,
        int(test.labels.max()) + 1,
    )
    results = probe(
        train.images,
        train.labels,
        test.images,
        test.labels,
        num_classes=num_classes,
        method=eval_cfg.method,
        l2s=eval_cfg.l2,
        val_fraction=eval_cfg.val_fraction,
    )
    context.save(
        name,
        train_embeddings=train.images,
        train_labels=train.labels,
        test_embeddings=test.images,
        test_labels=test.labels,
        l2=np.float64(results["l2"]),
    )
    out = {f"{prefix}/{k}": v for k, v in results.items()}
    out[f"{prefix}/num_train"] = len(train.labels)
    out[f"{prefix}/num_test"] = len(test.labels)
    out[f"{prefix}/num_skipped"] = train.skipped + test.skipped
    return out
