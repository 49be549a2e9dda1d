"""Training end to end on a toy split built from real photos: it learns (beats the
image+text-sum baseline on held-out queries), resumes exactly, and shards over devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.standin import StandInBackbone, StandInPreprocessor
from trainer.configs import get_config
from trainer.data.toy import build_toy_split
from trainer.data.triples import JsonlTriples, read_captions
from trainer.models.magiclens import MagicLensConfig
from trainer.train import train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    train_f, eval_f = build_toy_split(d, crops_per_photo=3, size=64)
    return train_f, eval_f, d / "captions.jsonl"


def _standin(image_residual: bool = False, head: str = "transformer"):
    return dict(backbone=(StandInBackbone(64), StandInPreprocessor()),
                model_config=MagicLensConfig("compact", 64, 4, image_residual=image_residual,
                                             head=head))


@pytest.mark.parametrize(("image_residual", "head"),
                         [(False, "transformer"), (True, "transformer"), (False, "edit")])
def test_training_learns_and_beats_sum_baseline(toy, tmp_path, image_residual, head):
    train_f, eval_f, caps = toy
    cfg = get_config("compact", steps=120, batch_size=32, align_steps=30, checkpoint_every=60)
    r = train(cfg, JsonlTriples(train_f), tmp_path / "wd", captions=read_captions(caps),
              eval_triples=JsonlTriples(eval_f), **_standin(image_residual, head))
    # Heads that start from image-only retrieval (the residual, the edit head) start at a
    # lower loss and grow their instruction term from zero, so their loss falls less in 120
    # steps; R@1 below is the real test.
    from_image = image_residual or head == "edit"
    assert np.mean(r.losses[-10:]) < (0.7 if from_image else 0.5) * np.mean(r.losses[:10])
    assert np.mean(r.align_losses[-5:]) < np.mean(r.align_losses[:5])
    m = r.metrics
    assert m["magiclens/R@1"] > m["image_text_sum/R@1"] + 10, m
    assert (r.checkpoint / "params").is_dir()
    meta = json.loads((r.checkpoint / "magiclens_meta.json").read_text())
    assert meta["config"] == "compact" and meta["metrics"]["magiclens/R@1"] == m["magiclens/R@1"]
    assert meta["arch"]["image_residual"] is image_residual and meta["arch"]["head"] == head


@pytest.mark.parametrize("head", ["transformer", "edit"])  # edit: with the PCA projection
def test_resume_continues_the_same_run(toy, tmp_path, head):
    train_f, _, _ = toy
    cfg = get_config("compact", steps=16, batch_size=16, checkpoint_every=4, warmup_steps=3)
    full = train(cfg, JsonlTriples(train_f), tmp_path / "a", **_standin(head=head))
    first = train(cfg, JsonlTriples(train_f), tmp_path / "b", stop_at=10, **_standin(head=head))
    rest = train(cfg, JsonlTriples(train_f), tmp_path / "b", **_standin(head=head))
    assert len(first.losses) == 10 and len(rest.losses) == 6
    np.testing.assert_allclose(first.losses + rest.losses, full.losses, rtol=1e-5, atol=1e-6)


def test_a_resumed_run_exports_what_its_alignment_stage_learned(toy, tmp_path):
    """The alignment stage runs once, before fusion's first checkpoint; a run stopped and
    resumed afterwards used to export the untrained projections (the stage was skipped)."""
    from trainer.checkpoints import load_params

    train_f, _, caps = toy
    cfg = get_config("compact", steps=12, batch_size=16, checkpoint_every=4, warmup_steps=3,
                     align_steps=10)
    kw = dict(captions=read_captions(caps), **_standin(head="edit"))
    full = train(cfg, JsonlTriples(train_f), tmp_path / "a", **kw)
    train(cfg, JsonlTriples(train_f), tmp_path / "b", stop_at=8, **kw)
    rest = train(cfg, JsonlTriples(train_f), tmp_path / "b", **kw)
    assert not rest.align_losses  # not trained again: restored from the workdir
    a, _ = load_params(full.checkpoint)
    b, _ = load_params(rest.checkpoint)
    for proj in ("img_proj", "txt_proj"):
        np.testing.assert_allclose(b["backbone"][proj]["kernel"], a["backbone"][proj]["kernel"],
                                   rtol=1e-5, atol=1e-6)


def test_full_mode_runs(toy, tmp_path):
    train_f, _, _ = toy
    cfg = get_config("compact", mode="full", steps=3, batch_size=4, warmup_steps=1)
    r = train(cfg, JsonlTriples(train_f), tmp_path / "full", **_standin())
    assert len(r.losses) == 3 and all(np.isfinite(r.losses))


def test_runs_without_hard_negatives(toy, tmp_path):
    train_f, _, _ = toy
    cfg = get_config("compact", steps=3, batch_size=4, warmup_steps=1, hard_negatives=0,
                     align_steps=0)
    r = train(cfg, JsonlTriples(train_f), tmp_path / "k0", **_standin())
    assert len(r.losses) == 3 and all(np.isfinite(r.losses))


_SHARD_SCRIPT = """
import numpy as np, jax
from tests.support.standin import StandInBackbone, StandInPreprocessor
from trainer.configs import get_config
from trainer.models.magiclens import MagicLensConfig, build_model, init_params
from trainer.train import (_frozen_triplet, contrastive_loss, duplicate_mask, eval_loss_fn,
    feature_param_shapes, init_trainable, make_mesh, subset)
from trainer.models.magiclens import MagicLens
from jax.sharding import NamedSharding, PartitionSpec as P
cfg = get_config("compact", query_negatives=1.0)
model, pre = build_model("compact", backbone=(StandInBackbone(64), StandInPreprocessor()),
                         config=MagicLensConfig("compact", 64, 4))
params = init_params(model, jax.random.PRNGKey(0), pre.image_size)
shapes = feature_param_shapes(model, 48, 32, MagicLens.encode_features)
tr = init_trainable(subset(params, shapes), cfg)
r = np.random.default_rng(0)
qf, tf = r.standard_normal((2, 16, 48)).astype(np.float32)
xf = r.standard_normal((16, 32)).astype(np.float32)
ef = r.standard_normal((32,)).astype(np.float32)
nf = r.standard_normal((16, 3, 48)).astype(np.float32)
nmask = r.random((16, 3)) < 0.5
dup = duplicate_mask(np.asarray([0, 1, 2, 0] * 4))
w = np.where(r.random(16) < 0.3, 0.5, 1.0).astype(np.float32)
keep = (w < 1.0).astype(np.float32)
from jax.sharding import Mesh
f = eval_loss_fn(model, cfg, _frozen_triplet, contrastive_loss(cfg))
for mesh in (Mesh(np.asarray(jax.devices()[:1]), ("data",)), make_mesh()):
    sh = NamedSharding(mesh, P("data"))
    args = [jax.device_put(a, sh) for a in (qf, xf, tf, nf, nmask, dup, w, keep)]
    print(mesh.devices.size, repr(float(f(tr, *args, ef))))
"""


def test_four_device_loss_equals_one_device():
    # A subprocess so XLA_FLAGS applies before jax initialises.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c",
                          _SHARD_SCRIPT],
                         env=env, capture_output=True, text=True, timeout=180, check=True)
    (d1, l1), (d4, l4) = (line.split() for line in out.stdout.strip().splitlines()[-2:])
    assert (d1, d4) == ("1", "4")
    assert float(l4) == pytest.approx(float(l1), rel=1e-5)


def test_relation_balanced_sampling_evens_out_relations_and_is_reproducible(tmp_path):
    """balance 1 draws a 90-triple relation and a 10-triple one about equally often (uniform
    epochs draw them 9:1), the same batches for the same (seed, step), and the relation
    label survives the JSONL snapshot."""
    from trainer.data.triples import Triple, write_jsonl
    from trainer.train import IndexedTriples, batch_indices

    (tmp_path / "a.png").write_bytes(b"")
    rows = [Triple(str(tmp_path / "a.png"), f"i{i}", str(tmp_path / f"{i}.png"),
                   relation="common" if i < 90 else "rare") for i in range(100)]
    data = IndexedTriples.from_source(JsonlTriples(write_jsonl(tmp_path / "t.jsonl", rows)))
    assert data.sampling_probs(0.0) is None
    probs = data.sampling_probs(1.0)
    rare = np.asarray([i >= 90 for i in range(100)])
    drawn = np.concatenate([batch_indices(0, s, 100, 16, probs) for s in range(200)])
    share = rare[drawn].mean()
    assert 0.4 < share < 0.6, share
    uniform = np.concatenate([batch_indices(0, s, 100, 16) for s in range(200)])
    assert abs(rare[uniform].mean() - 0.1) < 0.02
    np.testing.assert_array_equal(batch_indices(3, 7, 100, 16, probs),
                                  batch_indices(3, 7, 100, 16, probs))
    assert len(set(batch_indices(3, 7, 100, 16, probs))) == 16  # no repeats within a batch


def test_pca_pooled_projection_keeps_cosines_that_a_random_one_blurs():
    """On features that span few directions (as real pooled features do), the PCA kernel
    keeps every pairwise cosine; the random orthonormal one it replaces does not."""
    import jax

    from trainer.models.magiclens import build_model, init_params
    from trainer.train import pca_pooled_projection

    cfg = MagicLensConfig("compact", 16, 4, head="edit")
    model, pre = build_model("compact", backbone=(StandInBackbone(64), StandInPreprocessor()),
                             config=cfg)
    params = init_params(model, jax.random.PRNGKey(0), pre.image_size)
    dim = params["edit_head"]["pooled_proj"]["kernel"].shape[0]
    rng = np.random.default_rng(0)
    feats = (rng.standard_normal((200, 12)) @ rng.standard_normal((12, dim))).astype(np.float32)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)

    def cos_error(p):
        k = np.asarray(p["edit_head"]["pooled_proj"]["kernel"])
        g = unit @ k
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        return np.abs(g @ g.T - unit @ unit.T).max()

    pca = pca_pooled_projection(params, feats, cfg)
    assert cos_error(pca) < 1e-4 < 0.05 < cos_error(params)
    few = pca_pooled_projection(params, feats[:5], cfg)  # fewer images than dimensions
    k = np.asarray(few["edit_head"]["pooled_proj"]["kernel"])
    np.testing.assert_allclose(k.T @ k, np.eye(k.shape[1]), atol=1e-5)


def test_pca_of_full_width_is_a_rotation_ordered_by_variance():
    """embed_dim == the pooled width: the PCA kernel is a rotation (every cosine kept
    exactly) whose first axes are the most used ones, which `edit_shift_dim` relies on."""
    import jax

    from trainer.models.magiclens import build_model, init_params
    from trainer.train import pca_pooled_projection

    probe = MagicLensConfig("compact", 16, 4, head="edit")
    model, pre = build_model("compact", backbone=(StandInBackbone(64), StandInPreprocessor()),
                             config=probe)
    dim = init_params(model, jax.random.PRNGKey(0), pre.image_size)[
        "edit_head"]["pooled_proj"]["kernel"].shape[0]
    cfg = MagicLensConfig("compact", dim, 4, head="edit", edit_shift_dim=4)
    model, pre = build_model("compact", backbone=(StandInBackbone(64), StandInPreprocessor()),
                             config=cfg)
    params = init_params(model, jax.random.PRNGKey(0), pre.image_size)
    rng = np.random.default_rng(0)
    feats = (rng.standard_normal((300, 6)) @ rng.standard_normal((6, dim))).astype(np.float32)
    k = np.asarray(pca_pooled_projection(params, feats, cfg)["edit_head"]["pooled_proj"]["kernel"])
    np.testing.assert_allclose(k.T @ k, np.eye(dim), atol=1e-5)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    energy = ((unit @ k) ** 2).mean(axis=0)
    assert energy[:6].sum() > 0.999 and np.all(np.diff(energy[:6]) <= 1e-6)
