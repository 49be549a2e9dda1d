"""The text-query head (text-to-image search): trained in the same job as the edit head, it
learns (its loss falls, and it finds a caption's images far better than the untrained head),
is exported in the checkpoint, and leaves everything image queries use unchanged."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support.standin import StandInBackbone, StandInPreprocessor
from trainer.checkpoints import load_params
from trainer.configs import get_config
from trainer.data.toy import build_toy_split
from trainer.data.triples import JsonlTriples, read_captions
from trainer.eval.corpus import recall_any_at_k
from trainer.eval.metrics import rank_gallery
from trainer.models.magiclens import (
    MagicLens,
    MagicLensConfig,
    abstract_params,
    build_model,
    config_for_checkpoint,
)
from trainer.text_query import index_embeddings, pair_features
from trainer.train import train


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    train_f, eval_f = build_toy_split(d, crops_per_photo=3, size=64)
    return train_f, eval_f, read_captions(d / "captions.jsonl")


def _backbone():
    return StandInBackbone(64), StandInPreprocessor()


ARCH = MagicLensConfig("compact", 64, 4, head="edit")


def _recall(model, params, captions, ks=(1, 5)):
    """Text-to-image R@K over the captioned images: each distinct caption's targets are
    the images it describes."""
    params = jax.tree.map(jnp.asarray, params)  # device copies: see text_query_metrics
    fi, ft, img_idx, txt_idx = pair_features(model, params, _backbone()[1], captions, None)
    index = index_embeddings(model, params, _backbone()[1], fi)
    q = np.asarray(model.apply({"params": params}, ft,
                               method=MagicLens.encode_text_query_features))
    ranks = rank_gallery(q @ index.T, list(range(len(fi))), top=max(ks))
    gts = [tuple(int(i) for i in img_idx[txt_idx == t]) for t in range(len(ft))]
    return recall_any_at_k(ranks, gts, ks)


def test_text_head_learns_and_is_exported_without_touching_image_queries(toy, tmp_path):
    train_f, _, captions = toy
    cfg = get_config("compact", steps=40, batch_size=32, align_steps=20, text_query_steps=150,
                     checkpoint_every=40)
    with_text = train(cfg, JsonlTriples(train_f), tmp_path / "t", captions=captions,
                      backbone=_backbone(), model_config=ARCH)
    # the loss falls
    losses = with_text.text_query_losses
    assert len(losses) == 150
    assert np.mean(losses[-15:]) < 0.6 * np.mean(losses[:15]), (losses[:5], losses[-5:])
    # exported, with its architecture recorded: a loader needs nothing else
    meta = json.loads((with_text.checkpoint / "magiclens_meta.json").read_text())
    arch = config_for_checkpoint(meta)
    assert arch.text_query_hidden == cfg.text_query_hidden and meta["metrics"][
        "train/text_query_loss"] < losses[0]
    model, pre = build_model("compact", backbone=_backbone(), config=arch)
    params, _ = load_params(with_text.checkpoint, abstract_params(model, pre.image_size))
    assert model.has_text_query and "text_query_head" in params
    # it finds a caption's images far better than the same head untrained
    untrained = dict(params)
    untrained["text_query_head"] = model.init(
        jax.random.PRNGKey(123), np.zeros((1, 32), np.float32),
        method=MagicLens.encode_text_query_features)["params"]["text_query_head"]
    got, before = _recall(model, params, captions), _recall(model, untrained, captions)
    assert got[1] > before[1] + 20 and got[5] > before[5] + 40, (got, before)

    # The same job without the stage: the edit head and the index are bit for bit the same
    # (the stage runs after fusion and trains only its own head).
    plain = train(dataclasses.replace(cfg, text_query_steps=0), JsonlTriples(train_f),
                  tmp_path / "p", captions=captions, backbone=_backbone(), model_config=ARCH)
    plain_meta = json.loads((plain.checkpoint / "magiclens_meta.json").read_text())
    assert config_for_checkpoint(plain_meta).text_query_hidden == 0
    m0, _ = build_model("compact", backbone=_backbone(), config=ARCH)
    p0, _ = load_params(plain.checkpoint, abstract_params(m0, pre.image_size))
    assert not m0.has_text_query
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                        p0, {k: v for k, v in params.items() if k != "text_query_head"})
    assert all(jax.tree.leaves(same))
    np.testing.assert_array_equal(plain.losses, with_text.losses)


def test_a_model_without_the_head_refuses_text_queries():
    model, _ = build_model("compact", backbone=_backbone(), config=ARCH)
    assert not model.has_text_query
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32),
                        np.zeros((1, 12), np.int32))["params"]
    with pytest.raises(ValueError, match="no text-only path"):
        model.apply({"params": params}, np.zeros((1, 32), np.float32),
                    method=MagicLens.encode_text_query_features)
