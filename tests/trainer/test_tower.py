"""trainer.tower: every kind of last-layer delta is one ordinary 1x1 conv after merging, and
the cached training path computes the same pooled features as the merged layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer import tower


def _layer(rng):
    k1, k2, k3 = jax.random.split(rng, 3)
    x = jax.random.normal(k1, (3, 4, 6))  # 3 images, 4 positions, 6 channels in
    kernel = jax.random.normal(k2, (6, 5)) * 0.5
    bias = jax.random.normal(k3, (5,))
    return x, kernel, bias


@pytest.mark.parametrize("kind", tower.KINDS)
def test_cached_path_equals_the_merged_layer_and_starts_at_the_pretrained_one(kind):
    x, kernel, bias = _layer(jax.random.PRNGKey(0))
    z = x @ kernel + bias
    delta = tower.init_delta(kind, 6, 5, 2, jax.random.PRNGKey(1))
    pretrained = jnp.mean(jax.nn.relu6(z), axis=1)
    np.testing.assert_allclose(tower.pooled_from_cache(kind, delta, x, z), pretrained,
                               atol=1e-6)
    delta = jax.tree_util.tree_map(
        lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(2), a.shape), delta)
    k2, b2 = tower.effective(kind, delta, kernel, bias)
    merged = jnp.mean(jax.nn.relu6(x @ k2 + b2), axis=1)
    np.testing.assert_allclose(tower.pooled_from_cache(kind, delta, x, z), merged, atol=1e-5)
    assert not np.allclose(merged, pretrained, atol=1e-3)


def test_merge_into_replaces_only_the_last_layer():
    _, kernel, bias = _layer(jax.random.PRNGKey(0))
    params = {"backbone": {"image_tower": {"features_18": {"kernel": np.asarray(
        kernel).reshape(1, 1, 6, 5), "bias": np.asarray(bias)}, "features_17": {"w": 1}}},
        "edit_head": {"w": 2}}
    delta = {"scale": jnp.full((5,), 0.5), "shift": jnp.ones((5,))}
    out = tower.merge_into(params, "affine", delta)
    assert out["backbone"]["image_tower"]["features_18"]["kernel"].shape == (1, 1, 6, 5)
    np.testing.assert_allclose(out["backbone"]["image_tower"]["features_18"]["kernel"],
                               params["backbone"]["image_tower"]["features_18"]["kernel"] * 1.5)
    np.testing.assert_allclose(out["backbone"]["image_tower"]["features_18"]["bias"],
                               bias * 1.5 + 1.0, atol=1e-6)
    assert out["edit_head"] == {"w": 2} and out["backbone"]["image_tower"]["features_17"] == {
        "w": 1}
    np.testing.assert_allclose(params["backbone"]["image_tower"]["features_18"]["bias"], bias)


def test_unique_batch_encodes_each_image_once():
    q, t, n = np.array([3, 5]), np.array([5, 9]), np.array([[9, 3], [1, 1]])
    ids, (qi, ti, ni) = tower.unique_batch((q, t, n), 8)
    assert len(ids) == 8 and sorted(set(ids[:4])) == [1, 3, 5, 9]
    assert (ids[qi] == q).all() and (ids[ti] == t).all() and (ids[ni] == n).all()
    with pytest.raises(ValueError):
        tower.unique_batch((q, t, n), 3)
