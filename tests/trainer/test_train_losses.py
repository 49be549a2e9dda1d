"""Losses against hand-computed numpy values."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.losses import clip_symmetric, info_nce, info_nce_query_negatives


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


def _info_nce_by_hand(q, t, tq, negs, nmask, dup, w, tau, qneg):
    total = 0.0
    for i in range(len(q)):
        terms = [np.exp(q[i] @ t[j] / tau) for j in range(len(q)) if not dup[i, j]]
        terms += [np.exp(q[i] @ negs[i, k] / tau) for k in range(negs.shape[1]) if nmask[i, k]]
        if qneg:
            terms += [qneg * np.exp(q[i] @ tq[j] / tau) for j in range(len(q))]
        total += w[i] * -np.log(np.exp(q[i] @ t[i] / tau) / sum(terms))
    return total / w.sum()


@pytest.mark.parametrize("qneg", [0.0, 1.0, 0.5])
def test_info_nce_with_hard_negatives_masks_and_weights_by_hand(qneg):
    rng = np.random.default_rng(2)
    q, t, tq = (_unit(rng.standard_normal((4, 5))) for _ in range(3))
    negs = _unit(rng.standard_normal((4, 3, 5)))
    nmask = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 1]], bool)
    dup = np.zeros((4, 4), bool)
    dup[0, 2] = dup[2, 0] = True  # rows 0 and 2 share a target: not each other's negative
    w = np.array([1.0, 0.3, 1.0, 0.3], np.float32)
    got = float(info_nce(q, t, tq, negs, nmask, dup, w, 0.1, query_negatives=qneg))
    assert got == pytest.approx(_info_nce_by_hand(q, t, tq, negs, nmask, dup, w, 0.1, qneg),
                                rel=1e-5)


def test_hard_negative_near_the_query_raises_the_loss():
    q = np.array([[1.0, 0.0]])
    t = np.array([[0.8, 0.6]])
    near = np.array([[[0.9, 0.436]]])
    far = np.array([[[-1.0, 0.0]]])
    args = dict(query_targets=q, hard_mask=np.ones((1, 1), bool),
                duplicate_targets=np.zeros((1, 1), bool), weights=np.ones(1), temperature=0.1)
    assert float(info_nce(q, t, hard_negatives=near, **args)) > float(
        info_nce(q, t, hard_negatives=far, **args)) + 0.5


def test_identity_term_adds_the_kept_rows_distance_to_their_own_image_by_hand():
    rng = np.random.default_rng(3)
    q, t, tq = (_unit(rng.standard_normal((4, 5))) for _ in range(3))
    negs, nmask = np.zeros((4, 0, 5)), np.zeros((4, 0), bool)
    dup, w = np.zeros((4, 4), bool), np.ones(4, np.float32)
    keep = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    base = float(info_nce(q, t, tq, negs, nmask, dup, w, 0.1))
    got = float(info_nce(q, t, tq, negs, nmask, dup, w, 0.1, keep=keep, identity_weight=2.0))
    by_hand = 2.0 * np.mean([1.0 - q[i] @ tq[i] for i in (0, 2)])
    assert got - base == pytest.approx(by_hand, rel=1e-5)
    assert float(info_nce(q, t, tq, negs, nmask, dup, w, 0.1, keep=np.zeros(4),
                          identity_weight=2.0)) == pytest.approx(base, rel=1e-6)


def test_identity_term_pulls_a_kept_query_back_towards_its_own_image():
    import jax

    own, target = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    args = dict(targets=target, query_targets=own, hard_negatives=np.zeros((1, 0, 2)),
                hard_mask=np.zeros((1, 0), bool), duplicate_targets=np.zeros((1, 1), bool),
                weights=np.ones(1), temperature=0.1, keep=np.ones(1))

    def loss(angle, weight):
        query = jax.numpy.stack([jax.numpy.cos(angle), jax.numpy.sin(angle)])[None]
        return info_nce(query, identity_weight=weight, **args)

    # A single row's InfoNCE is constant; only the identity term moves the query: towards
    # its own image (angle 0), i.e. the gradient in the angle is positive at 45 degrees.
    assert float(jax.grad(loss)(np.pi / 4, 0.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(jax.grad(loss)(np.pi / 4, 1.0)) > 0.5
