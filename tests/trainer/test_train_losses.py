"""Losses against hand-computed numpy values."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.losses import clip_symmetric, info_nce_query_negatives


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_info_nce_with_query_negatives_by_hand():
    rng = np.random.default_rng(0)
    q, t, tq = (_unit(rng.standard_normal((3, 4))) for _ in range(3))
    tau = 0.1
    expected = 0.0
    for i in range(3):
        pos = np.exp(q[i] @ t[i] / tau)
        denom = sum(np.exp(q[i] @ t[j] / tau) + np.exp(q[i] @ tq[j] / tau) for j in range(3))
        expected += -np.log(pos / denom)
    expected /= 3
    assert float(info_nce_query_negatives(q, t, tq, tau)) == pytest.approx(expected, rel=1e-5)


def test_query_negative_penalises_returning_the_query_image():
    q = np.array([[1.0, 0.0]])
    t = np.array([[0.0, 1.0]])
    near_query = np.array([[1.0, 0.0]])
    far = np.array([[-1.0, 0.0]])
    assert float(info_nce_query_negatives(q, t, near_query, 0.1)) > float(
        info_nce_query_negatives(q, t, far, 0.1)) + 5


def test_clip_symmetric_by_hand():
    rng = np.random.default_rng(1)
    a, b = _unit(rng.standard_normal((4, 3))), _unit(rng.standard_normal((4, 3)))
    lg = a @ b.T / 0.07
    ls = lambda m: np.log(np.exp(m).sum(1))  # noqa: E731
    expected = 0.5 * (np.mean(ls(lg) - np.diag(lg)) + np.mean(ls(lg.T) - np.diag(lg)))
    assert float(clip_symmetric(a, b, 0.07)) == pytest.approx(expected, rel=1e-5)
