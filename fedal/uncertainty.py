"""Uncertainty measures on class-probability arrays (docs/method.md, "Pseudo-updates", "Baselines and training modes").

Every function takes an (n, C) array of probabilities and returns a length-n array in which a
larger value means a more uncertain prediction, so that any of them can feed the same
"pick the largest" selection code. ``class_mix`` is the one aggregate here: a client's predicted
class mix over its pool, the C numbers the balanced client rules read.
"""

from __future__ import annotations

import numpy as np

from fedal.validation import check_probs


def _check_probs(probs) -> np.ndarray:
    return check_probs(probs)


def entropy(probs) -> np.ndarray:
    """Shannon entropy −Σ p log p with the natural log (docs/method.md, "Pseudo-updates"); 0·log 0 is taken as 0."""
    p = _check_probs(probs)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def margin(probs) -> np.ndarray:
    """Negative margin between the two most probable classes: −(p_(1) − p_(2)).

    Negated so that a small margin (close to the decision boundary) ranks as more uncertain.
    With a single class the margin is 1 (no ambiguity).
    """
    p = _check_probs(probs)
    if p.shape[1] == 1:
        return -np.ones(p.shape[0])
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return -(top2[:, 1] - top2[:, 0])


def least_confidence(probs) -> np.ndarray:
    """1 − max_j p_j: how far the top prediction is from certainty."""
    p = _check_probs(probs)
    return 1.0 - p.max(axis=1)


# how a client summarises its predictions over U_z for the balanced client rules (predicted-mix);
# bbse: the argmax share, which the server corrects through the labeled points' confusion matrix
PREDICTED_MIXES = ("softmax", "argmax", "bbse")


def class_mix(probs, kind: str, num_classes: int) -> np.ndarray:
    """The predicted class mix of a pool, C numbers summing to 1 (zeros for an empty pool).

    ``softmax``: the mean softmax. ``argmax``: the share of points predicted in each class. A head
    retrained at a small learning rate is unsure of everything, so its mean softmax is close to
    uniform even where its argmax is right more often than not; the argmax share keeps the class
    signal such a model has (docs/method.md, "Balanced DivFL"). ``bbse``: the argmax share, which
    the server corrects with ``bbse_mix``."""
    if kind not in PREDICTED_MIXES:
        raise ValueError(f"predicted-mix = {kind!r} is not valid; valid values: {', '.join(PREDICTED_MIXES)}")
    p = np.asarray(probs, dtype=np.float64)
    if p.size == 0:
        return np.zeros(num_classes)
    p = _check_probs(p)
    if p.shape[1] != num_classes:
        raise ValueError(f"predictions have {p.shape[1]} classes, the data {num_classes}")
    if kind == "softmax":
        return p.mean(axis=0)
    return np.bincount(p.argmax(axis=1), minlength=num_classes) / len(p)


def confusion_counts(probs, labels, num_classes: int) -> np.ndarray:
    """(C, C) counts of labeled points, true class × predicted class (``predicted-mix = bbse``):
    an aggregate of the client's labeled set, never per point."""
    p = _check_probs(np.asarray(probs, dtype=np.float64)) if len(probs) else np.zeros((0, num_classes))
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (np.asarray(labels, dtype=np.int64), p.argmax(axis=1)), 1)
    return conf


def bbse_mix(confusion, argmax_share) -> np.ndarray:
    """A pool's class mix q from its argmax share μ by black-box shift estimation (Lipton, Wang and
    Smola, ICML 2018): μ = M q with M[h, t] = P(predicted h | true t) from ``confusion`` (true ×
    predicted counts of labeled points), solved for q ≥ 0 by non-negative least squares and
    normalised. A class with no labeled point has a zero column and gets no mass; a pool with no
    prediction (μ = 0) gets zeros. ``argmax_share`` may be (C,) or one row per pool, (M, C): M is
    built once for all of them. docs/method.md, "Mix balance"."""
    from scipy.optimize import nnls

    conf = np.asarray(confusion, dtype=np.float64)
    m = (conf / np.maximum(conf.sum(1, keepdims=True), 1)).T

    def one(mu: np.ndarray) -> np.ndarray:
        if mu.sum() <= 0:
            return np.zeros_like(mu)
        q = nnls(m, mu)[0]
        return q / q.sum() if q.sum() > 0 else np.full(len(q), 1.0 / len(q))

    mu = np.asarray(argmax_share, dtype=np.float64)
    return one(mu) if mu.ndim == 1 else np.stack([one(row) for row in mu])
