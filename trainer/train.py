"""Contrastive training of MagicLens on (query image, instruction, target image) triples.

Two modes. `frozen`: backbone features are computed once and cached; only the parameters
that `MagicLens.encode_features` touches are trained (the fusion head, plus the projections
for the compact backbone). `full`: everything is trained on raw pixels. For `compact` an
alignment stage (CLIP loss on image captions, projections only) runs first when captions are
given. The fusion loss (trainer.losses.info_nce) takes the batch's other targets as
negatives, optionally the query images (the paper's query negatives) and, for specific
instructions, other targets of the same query on the same page (hard negatives). The batch
is split over all local devices on a 'data' mesh axis.

CLI: python -m trainer.train --config compact --triples FILE --workdir DIR [--steps N]
     [--mode frozen|full] [--captions FILE] [--eval-triples FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from trainer import losses
from trainer.checkpoints import META_FILE, load_params, save_params
from trainer.configs import TrainConfig, get_config
from trainer.data.triples import JsonlTriples, TripleSource, load_image, read_captions
from trainer.features import cached_features
from trainer.models.magiclens import (
    CONFIGS,
    MagicLens,
    arch_meta,
    build_model,
    pretrained_params,
)


@dataclass
class TrainResult:
    checkpoint: Path  # exported params (trainer.checkpoints.load_params)
    metrics: dict[str, float]
    losses: list[float] = field(default_factory=list)
    align_losses: list[float] = field(default_factory=list)
    text_query_losses: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------- param subsets

def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
    return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def subset(params: Any, like: Any) -> dict:
    """The leaves of `params` at the paths present in `like`."""
    flat = _flat(params)
    return flax.traverse_util.unflatten_dict({k: flat[k] for k in _flat(like)})


def merge(params: Any, update: Any) -> dict:
    """`params` with the leaves of `update` replaced."""
    flat = _flat(params)
    flat.update(_flat(update))
    return flax.traverse_util.unflatten_dict(flat)


def feature_param_shapes(model: MagicLens, fi: int, ft: int, method: Callable) -> Any:
    """The params a feature-level method touches (found by initialising just that method)."""
    return jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, fi)), jnp.zeros((1, ft)), method=method)["params"])


# ----------------------------------------------------------------------------- data order

def batch_indices(seed: int, step: int, n: int, batch: int,
                  probs: np.ndarray | None = None) -> np.ndarray:
    """Example ids of batch `step`: a fresh permutation per epoch (or, with `probs`, a draw
    without replacement by those probabilities), a pure function of (seed, step) so a
    resumed run sees exactly the batches it would have seen."""
    if probs is not None:
        return np.random.default_rng([seed, step, 11]).choice(n, size=batch, p=probs,
                                                               replace=n < batch)
    pos = np.arange(step * batch, (step + 1) * batch)
    epochs, offs = pos // n, pos % n
    out = np.empty(batch, np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(n)
        out[epochs == e] = perm[offs[epochs == e]]
    return out


@dataclass
class IndexedTriples:
    """Triples as indices into unique image paths and unique instructions, with each
    triple's page (an index, -1 unknown) and specificity (NaN unknown)."""

    images: list[str]
    texts: list[str]
    query: np.ndarray
    instr: np.ndarray
    target: np.ndarray
    page: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    specificity: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    relation: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def from_source(cls, source: TripleSource) -> IndexedTriples:
        images: dict[str, int] = {}
        texts: dict[str, int] = {}
        pages: dict[str, int] = {}
        relations: dict[str, int] = {}
        q, x, t, pg, sp, rel = [], [], [], [], [], []
        for tr in source:
            q.append(images.setdefault(tr.query_image, len(images)))
            t.append(images.setdefault(tr.target_image, len(images)))
            x.append(texts.setdefault(tr.instruction, len(texts)))
            pg.append(pages.setdefault(tr.page, len(pages)) if tr.page else -1)
            sp.append(np.nan if tr.specificity is None else float(tr.specificity))
            rel.append(relations.setdefault(tr.relation, len(relations)))
        if not q:
            raise ValueError("no triples")
        return cls(list(images), list(texts), np.asarray(q), np.asarray(x), np.asarray(t),
                   np.asarray(pg, np.int64), np.asarray(sp, np.float32),
                   np.asarray(rel, np.int64))

    def is_specific(self, specific_from: float) -> np.ndarray:
        """[N] bool: the writer scored the triple at least `specific_from` (unknown: yes)."""
        return np.isnan(self.specificity) | (self.specificity >= specific_from)

    def hard_negatives(self, k: int, specific_from: float, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
        """([N, K] image ids, [N, K] mask): for each specific triple, up to K other targets of
        the same query image on the same page, never an image that is a target of the same
        (query, instruction). Such siblings (the other skin tones, the other genders, the
        other styles of one emoji) are exactly what a specific instruction must tell apart;
        a random batch almost never holds them."""
        n = len(self.query)
        if k <= 0:  # zero-width: no extra target encodings per step
            return np.zeros((n, 0), np.int64), np.zeros((n, 0), bool)
        neg = np.tile(self.target[:, None], (1, k))
        mask = np.zeros((n, k), bool)
        by_group: dict[tuple[int, int], set[int]] = {}
        answers: dict[tuple[int, int], set[int]] = {}
        for i in range(n):
            if self.page[i] >= 0:
                by_group.setdefault((int(self.page[i]), int(self.query[i])), set()).add(
                    int(self.target[i]))
            answers.setdefault((int(self.query[i]), int(self.instr[i])), set()).add(
                int(self.target[i]))
        specific = self.is_specific(specific_from)
        rng = np.random.default_rng([seed, 7])
        for i in range(n):
            if not specific[i] or self.page[i] < 0:
                continue
            cands = sorted(by_group[(int(self.page[i]), int(self.query[i]))]
                           - answers[(int(self.query[i]), int(self.instr[i]))]
                           - {int(self.query[i])})
            if len(cands) > k:
                cands = list(rng.choice(cands, size=k, replace=False))
            neg[i, :len(cands)] = cands
            mask[i, :len(cands)] = True
        return neg, mask

    def sampling_probs(self, balance: float) -> np.ndarray | None:
        """[N] draw probabilities ∝ (the triple's relation count)^-balance, or None for
        uniform epochs. Without it the most frequent relations (capitals, skin tones) fill
        most batches and rare ones (neighbours, regions) are seen a few times."""
        if balance <= 0 or len(self.relation) == 0:
            return None
        counts = np.bincount(self.relation).astype(np.float64)
        p = counts[self.relation] ** -balance
        return p / p.sum()

    def weights(self, specific_from: float, vague_weight: float) -> np.ndarray:
        """[N] loss weight: `vague_weight` for triples scored below `specific_from`."""
        return np.where(self.is_specific(specific_from), 1.0, vague_weight).astype(np.float32)


def duplicate_mask(target_ids: np.ndarray) -> np.ndarray:
    """[B, B] True where two different batch rows have the same target image."""
    same = target_ids[:, None] == target_ids[None, :]
    return same & ~np.eye(len(target_ids), dtype=bool)


# ----------------------------------------------------------------------------- setup helpers

def pca_pooled_projection(params: Any, image_features: np.ndarray, config: Any) -> dict:
    """`params` with the edit head's frozen pooled projection set to the top principal
    directions (uncentred, so inner products are what is kept) of the unit pooled features.

    Why: a random 1280 -> 512 projection blurs the backbone's cosines (on the demo corpus,
    ranking by it alone loses 1.6 points of R@10 against the raw features, 9 on flags of a
    region); the directions the data actually spans keep ~99% of their energy."""
    if config.head != "edit":  # the transformer head has no frozen projection
        return params
    colour_dim = config.colour_bins ** 3 if config.colour_bins else 0
    pooled = np.asarray(image_features[:, :image_features.shape[1] - colour_dim], np.float64)
    unit = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    kernel = np.asarray(params["edit_head"]["pooled_proj"]["kernel"])
    if kernel.shape[0] < kernel.shape[1]:  # a widening: the random one is an isometry
        return params
    # ascending eigenvalues; with fewer images than dimensions the trailing directions are
    # an orthonormal basis of what the images do not span, which costs nothing
    _, vecs = np.linalg.eigh(unit.T @ unit / len(unit))
    top = vecs[:, ::-1][:, :kernel.shape[1]]
    top = top * np.sign(top.sum(axis=0, keepdims=True) + 1e-12)  # a deterministic sign
    flat = _flat(params)
    flat[("edit_head", "pooled_proj", "kernel")] = jnp.asarray(top, kernel.dtype)
    return flax.traverse_util.unflatten_dict(flat)


def compute_dtype() -> Any:
    """bf16 on accelerators, f32 on CPU."""
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32


def make_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), ("data",))


def make_optimizer(cfg: TrainConfig, steps: int, lr: float) -> optax.GradientTransformation:
    warmup = min(cfg.warmup_steps, max(steps - 1, 0))
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1),
                                               end_value=lr * 0.01)
    decay_mask = lambda p: jax.tree_util.tree_map(lambda a: a.ndim >= 2, p)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(sched, weight_decay=cfg.weight_decay, mask=decay_mask))


def init_trainable(model_params: Any, cfg: TrainConfig) -> dict:
    t = {"model": model_params}
    if cfg.learn_temperature:
        t["log_temperature"] = jnp.asarray(np.log(cfg.temperature), jnp.float32)
    return t


def temperature(trainable: dict, cfg: TrainConfig) -> jax.Array:
    if "log_temperature" in trainable:
        return jnp.clip(jnp.exp(trainable["log_temperature"]), 0.005, 1.0)
    return jnp.asarray(cfg.temperature, jnp.float32)


# ----------------------------------------------------------------------------- embeddings

def _frozen_triplet(m: MagicLens, qf, xf, tf, nf, nmask, dup, w, keep, ef):
    """(queries, targets, query images as targets, hard negatives, and the masks and weights
    passed through) from cached features; nf is [B, K, F]."""
    b, k = nf.shape[0], nf.shape[1]
    e = jnp.broadcast_to(ef, (b, ef.shape[-1]))
    ek = jnp.broadcast_to(ef, (b * k, ef.shape[-1]))
    flat = m.encode_target_features(nf.reshape(b * k, nf.shape[2]), ek)  # K may be 0
    negs = flat.reshape(b, k, flat.shape[-1])
    return (m.encode_features(qf, xf), m.encode_target_features(tf, e),
            m.encode_target_features(qf, e), negs, nmask, dup, w, keep)


def _full_triplet(m: MagicLens, qimg, tok, timg, nimg, nmask, dup, w, keep):
    """Same from pixels and tokens (nimg is [B, K, H, W, 3])."""
    b, k = nimg.shape[0], nimg.shape[1]
    flat = m.encode_target(nimg.reshape(b * k, *nimg.shape[2:]))  # K may be 0
    negs = flat.reshape(b, k, flat.shape[-1])
    return (m.encode_query(qimg, tok), m.encode_target(timg), m.encode_target(qimg), negs,
            nmask, dup, w, keep)


def _tower_triplet(m: MagicLens, delta, x, z, colour, qi, xf, ti, ni, nmask, dup, w, keep, ef, *,
                   kind: str):
    """`_frozen_triplet` with the tower's last layer trained (trainer.tower): the batch's
    unique images' pooled features are recomputed from cached activations x and pretrained
    pre-activations z, then gathered for queries (qi), targets (ti) and negatives (ni)."""
    from trainer import tower

    pooled = tower.pooled_from_cache(kind, delta, x, z)
    feats = jnp.concatenate([pooled, colour.astype(jnp.float32)], axis=-1)
    return _frozen_triplet(m, feats[qi], xf, feats[ti], feats[ni], nmask, dup, w, keep, ef)


def contrastive_loss(cfg: TrainConfig) -> Callable:
    """The fusion-stage loss for `cfg` (trainer.losses.info_nce): the embed functions'
    outputs (…, weights, keep) then the temperature."""
    def loss(q, t, qt, negs, nmask, dup, w, keep, temp):
        return losses.info_nce(q, t, qt, negs, nmask, dup, w, temp,
                               query_negatives=cfg.query_negatives, keep=keep,
                               identity_weight=cfg.identity_weight)
    return loss


def _align_pair(m: MagicLens, fi, ft):
    from trainer.models.fusion import l2_normalize

    i, t = m.project_features(fi, ft)
    return l2_normalize(i), l2_normalize(t)


# ----------------------------------------------------------------------------- train steps

def make_step(model: MagicLens, cfg: TrainConfig, opt: optax.GradientTransformation,
              embed: Callable, loss_fn: Callable, mesh: Mesh, n_batch_args: int,
              n_const_args: int = 0):
    """A jitted (trainable, opt_state, *batch, *consts) -> (trainable, opt_state, loss)."""
    repl = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P("data"))

    def loss_of(trainable, *args):
        extra = (trainable["tower"],) if "tower" in trainable else ()  # trainer.tower's delta
        embs = model.apply({"params": trainable["model"]}, *extra, *args, method=embed)
        return loss_fn(*embs, temperature(trainable, cfg))

    def step(trainable, opt_state, *args):
        loss, grads = jax.value_and_grad(loss_of)(trainable, *args)
        updates, opt_state = opt.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    return jax.jit(step, in_shardings=(repl, repl) + (data,) * n_batch_args
                   + (repl,) * n_const_args, out_shardings=(repl, repl, repl),
                   donate_argnums=(0, 1))


def eval_loss_fn(model: MagicLens, cfg: TrainConfig, embed: Callable, loss_fn: Callable):
    """Loss only (used by tests to compare device counts)."""
    def f(trainable, *args):
        embs = model.apply({"params": trainable["model"]}, *args, method=embed)
        return loss_fn(*embs, temperature(trainable, cfg))
    return jax.jit(f)


def _run_loop(step_fn, trainable, opt_state, get_batch, start: int, steps: int, batch: int,
              desc: str, on_step: Callable[[int, Any, Any, float], None] | None = None
              ) -> tuple:
    bar = tqdm(total=steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
               mininterval=1.0)
    losses_out: list[float] = []
    t0 = time.perf_counter()
    for done, s in enumerate(range(start, steps), start=1):
        trainable, opt_state, loss = step_fn(trainable, opt_state, *get_batch(s))
        loss_v = float(loss)
        losses_out.append(loss_v)
        if done == 1:  # exclude the compiling first step from the throughput figure
            t0 = time.perf_counter()
        rate = (done - 1) * batch / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{loss_v:.4f}", triples_per_s=f"{rate:.1f}")
        bar.update(1)
        if on_step is not None:
            on_step(s + 1, trainable, opt_state, loss_v)
    bar.close()
    return trainable, opt_state, losses_out


# ----------------------------------------------------------------------------- entry point

def train(cfg: TrainConfig, triples: TripleSource, workdir: str | Path, *,
          captions: list[tuple[str, str]] | None = None,
          eval_triples: TripleSource | None = None,
          backbone: tuple[Any, Any] | None = None, model_config: Any = None,
          init_params: Any = None, stop_at: int | None = None,
          on_loss: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train, checkpoint (resumable) and export; returns the export path and metrics.

    `init_params` starts from given full params (e.g. a released checkpoint); otherwise the
    backbone's offline pretrained weights (compact) or a seeded init. `stop_at` ends this
    invocation early after checkpointing (a later call with the same workdir resumes).
    `on_loss(step, loss)` is called after each fusion step (and its checkpoint, if any); an
    exception it raises stops training, resumable from the last checkpoint.
    """
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh()
    n_dev = mesh.devices.size
    if cfg.batch_size % n_dev:
        raise ValueError(f"batch_size {cfg.batch_size} not divisible by {n_dev} devices")
    from trainer.text_query import train_text_query, with_text_query

    if captions and cfg.text_query_steps > 0:  # the export gets a text-only query path
        model_config = with_text_query(model_config or CONFIGS[cfg.model], cfg)
    model, pre = build_model(cfg.model, dtype=compute_dtype(), backbone=backbone,
                             config=model_config)
    params = init_params if init_params is not None else pretrained_params(
        model, jax.random.PRNGKey(cfg.seed), pre.image_size)
    data = IndexedTriples.from_source(triples)
    negs, neg_mask = data.hard_negatives(cfg.hard_negatives, cfg.specific_from, cfg.seed)
    weights = data.weights(cfg.specific_from, cfg.vague_weight)
    keep = (~data.is_specific(cfg.specific_from)).astype(np.float32)
    probs = data.sampling_probs(cfg.relation_balance)
    repl = NamedSharding(mesh, P())
    data_sh = NamedSharding(mesh, P("data"))

    mngr = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(
        max_to_keep=2, save_interval_steps=cfg.checkpoint_every))
    latest = mngr.latest_step()

    align_losses: list[float] = []
    if cfg.mode == "frozen":
        fi, ft = cached_features(workdir / "features.npz", model, params, pre, data.images,
                                 [*data.texts, ""], progress=True)
        ef, ft = ft[-1], ft[:-1]
        shapes = feature_param_shapes(model, fi.shape[1], ft.shape[1], MagicLens.encode_features)
        params, align_losses = _stage_one(model, cfg, params, pre, captions, workdir, mesh,
                                          resumed=latest is not None)
        if cfg.tower_lit and captions:
            fi = _retuned_features(model, params, pre, data.images, fi, workdir)
        if cfg.pooled_projection == "pca":
            params = pca_pooled_projection(params, fi, model.config)
        elif cfg.pooled_projection != "random":
            raise ValueError(f"pooled_projection must be random or pca, not "
                             f"{cfg.pooled_projection!r}")
        trainable = init_trainable(subset(params, shapes), cfg)
        embed, n_batch = _frozen_triplet, 8
        consts = (jax.device_put(jnp.asarray(ef), repl),)

        def get_batch(s: int):
            idx = batch_indices(cfg.seed, s, len(data.query), cfg.batch_size, probs)
            arrs = (fi[data.query[idx]], ft[data.instr[idx]], fi[data.target[idx]],
                    fi[negs[idx]], neg_mask[idx], duplicate_mask(data.target[idx]),
                    weights[idx], keep[idx])
            return (*(jax.device_put(a, data_sh) for a in arrs), *consts)

        if cfg.tower_tune:
            get_batch, embed, n_batch = _tower_setup(
                cfg, model, params, pre, data, fi, ft, negs, neg_mask, weights, keep, probs,
                workdir, trainable, consts, data_sh, n_dev)
    elif cfg.mode == "full":
        params, align_losses = _stage_one(model, cfg, params, pre, captions, workdir, mesh,
                                          resumed=latest is not None)
        trainable = init_trainable(params, cfg)
        embed, n_batch, consts = _full_triplet, 8, ()
        pixels = np.stack([pre.images([load_image(p)])[0] for p in data.images])
        tokens = pre.texts(data.texts)

        def get_batch(s: int):
            idx = batch_indices(cfg.seed, s, len(data.query), cfg.batch_size, probs)
            arrs = (pixels[data.query[idx]], tokens[data.instr[idx]], pixels[data.target[idx]],
                    pixels[negs[idx]], neg_mask[idx], duplicate_mask(data.target[idx]),
                    weights[idx], keep[idx])
            return tuple(jax.device_put(a, data_sh) for a in arrs)
    else:
        raise ValueError(f"mode must be frozen or full, not {cfg.mode!r}")

    opt = make_optimizer(cfg, cfg.steps, cfg.learning_rate)
    if "tower" in trainable:  # the tower's delta has its own (lower) learning rate
        opt = _with_tower_rate(opt, make_optimizer(cfg, cfg.steps, cfg.tower_learning_rate))
    opt_state = opt.init(trainable)
    start = 0
    if latest is not None:
        restored = mngr.restore(latest, args=ocp.args.StandardRestore(
            {"trainable": trainable, "opt_state": opt_state}))
        trainable, opt_state, start = restored["trainable"], restored["opt_state"], latest
    trainable = jax.device_put(trainable, repl)
    opt_state = jax.device_put(opt_state, repl)
    step_fn = make_step(model, cfg, opt, embed, contrastive_loss(cfg), mesh, n_batch,
                        len(consts))

    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps

    def on_step(s: int, tr, os_, loss: float):
        if s % cfg.checkpoint_every == 0 or s == end:
            mngr.save(s, args=ocp.args.StandardSave({"trainable": tr, "opt_state": os_}),
                      force=s == end)
        if on_loss is not None:
            on_loss(s, loss)

    try:
        trainable, opt_state, loss_hist = _run_loop(step_fn, trainable, opt_state, get_batch,
                                                    start, end, cfg.batch_size,
                                                    f"fusion/{cfg.mode}", on_step)
    finally:
        # Also when the loop is interrupted: an asynchronous save still in flight would
        # otherwise land after a resumed run has already chosen its starting step.
        mngr.wait_until_finished()
        mngr.close()
    if end < cfg.steps:
        return TrainResult(workdir / "checkpoints", {"train/steps": float(end)}, loss_hist,
                           align_losses)

    final = merge(params, jax.device_get(trainable["model"]))
    if "tower" in trainable:
        from trainer import tower

        final = tower.merge_into(final, cfg.tower_tune, jax.device_get(trainable["tower"]))
    text_losses: list[float] = []
    if model.has_text_query and captions and cfg.text_query_steps > 0:
        final, text_losses = train_text_query(model, cfg, final, pre, captions, workdir, mesh)
    metrics: dict[str, float] = {"train/steps": float(cfg.steps)}
    if text_losses:
        metrics["train/text_query_loss"] = float(np.mean(text_losses[-max(1, len(
            text_losses) // 10):]))
    if loss_hist:
        metrics["train/final_loss"] = float(np.mean(loss_hist[-max(1, len(loss_hist) // 10):]))
    metrics["train/temperature"] = float(temperature(jax.device_get(trainable), cfg))
    if eval_triples is not None:
        from trainer.eval.retrieval import evaluate_triples

        metrics |= evaluate_triples(model, final, pre, eval_triples,
                                    cache_file=workdir / "eval_features.npz")
    out = save_params(workdir / "export", final, {
        "config": cfg.model, "mode": cfg.mode, "steps": cfg.steps, "metrics": metrics,
        "train_config": dataclasses.asdict(cfg), **arch_meta(model.config)})
    return TrainResult(out, metrics, loss_hist, align_losses, text_losses)


def _tower_setup(cfg: TrainConfig, model: MagicLens, params: Any, pre: Any,
                 data: IndexedTriples, fi: np.ndarray, ft: np.ndarray, negs: np.ndarray,
                 neg_mask: np.ndarray, weights: np.ndarray, keep: np.ndarray,
                 probs: np.ndarray | None,
                 workdir: Path, trainable: dict, consts: tuple, data_sh: Any, n_dev: int):
    """Frozen mode with the tower's last layer trained: adds the delta to `trainable` and
    returns (get_batch, embed, n_batch_args). Each step carries the batch's unique images
    once (padded to the most any step of the run has), not one copy per role."""
    from trainer import tower

    if not hasattr(model.backbone_def, "last_input"):
        raise ValueError("tower_tune needs the compact backbone (MobileNetV2)")
    x = tower.cached_inputs(workdir / "tower_inputs.npz", model, params, pre, data.images,
                            progress=True, dtype=np.float16)
    kernel, bias = tower.base_layer(params)
    z = tower.precompute_z(x, kernel, bias)
    colour = fi[:, kernel.shape[1]:]
    trainable["tower"] = tower.init_delta(cfg.tower_tune, kernel.shape[0], kernel.shape[1],
                                          cfg.tower_rank, jax.random.PRNGKey(cfg.seed + 3))

    def parts(s: int):
        idx = batch_indices(cfg.seed, s, len(data.query), cfg.batch_size, probs)
        return idx, (data.query[idx], data.target[idx], negs[idx])

    most = max(len(np.unique(np.concatenate([p.ravel() for p in parts(s)[1]])))
               for s in range(cfg.steps))
    size = -(-most // (8 * n_dev)) * 8 * n_dev

    def get_batch(s: int):
        idx, (q, t, n) = parts(s)
        ids, (qi, ti, ni) = tower.unique_batch((q, t, n), size)
        arrs = (x[ids], z[ids], colour[ids])
        rows = (qi, ft[data.instr[idx]], ti, ni, neg_mask[idx], duplicate_mask(t),
                weights[idx], keep[idx])
        return (*(jax.device_put(a, data_sh) for a in (*arrs, *rows)), *consts)

    embed = functools.partial(_tower_triplet, kind=cfg.tower_tune)
    return get_batch, embed, 11


def _align(model: MagicLens, cfg: TrainConfig, params: Any, pre: Any,
           captions: list[tuple[str, str]], workdir: Path, mesh: Mesh) -> tuple[Any, list]:
    """Stage 1 (compact): CLIP loss over (image, caption) pairs, projections only."""
    paths = sorted({p for p, _ in captions})
    texts = sorted({t for _, t in captions})
    fi, ft = cached_features(workdir / "align_features.npz", model, params, pre, paths, texts,
                             progress=True)
    pi = {p: i for i, p in enumerate(paths)}
    ti = {t: i for i, t in enumerate(texts)}
    img_idx = np.asarray([pi[p] for p, _ in captions])
    txt_idx = np.asarray([ti[t] for _, t in captions])
    shapes = feature_param_shapes(model, fi.shape[1], ft.shape[1], MagicLens.project_features)
    if not _flat(shapes):
        return params, []  # backbone without trainable projections: nothing to align
    acfg = dataclasses.replace(cfg, learn_temperature=False, temperature=cfg.align_temperature)
    trainable = init_trainable(subset(params, shapes), acfg)
    opt = make_optimizer(acfg, cfg.align_steps, cfg.align_learning_rate)
    data_sh = NamedSharding(mesh, P("data"))
    step_fn = make_step(model, acfg, opt, _align_pair, losses.clip_symmetric, mesh, 2)

    def get_batch(s: int):
        idx = batch_indices(cfg.seed + 1, s, len(captions), cfg.batch_size)
        return (jax.device_put(fi[img_idx[idx]], data_sh),
                jax.device_put(ft[txt_idx[idx]], data_sh))

    trainable, _, hist = _run_loop(step_fn, trainable, opt.init(trainable), get_batch, 0,
                                   cfg.align_steps, cfg.batch_size, "align")
    return merge(params, jax.device_get(trainable["model"])), hist


STAGE_ONE_DIR = "stage1"


def _stage_one(model: MagicLens, cfg: TrainConfig, params: Any, pre: Any,
               captions: list[tuple[str, str]] | None, workdir: Path, mesh: Mesh, *,
               resumed: bool) -> tuple[Any, list]:
    """Before fusion: LiT (`tower_lit`) or the projections' alignment (`align_steps`) on
    captions. What it changed is kept in the workdir, so a resumed run exports the same
    projections and tower that its fusion checkpoints were trained on."""
    if not captions or not (cfg.tower_lit or cfg.align_steps > 0):
        return params, []
    saved = workdir / STAGE_ONE_DIR
    if resumed and (saved / META_FILE).exists():
        changed, _ = load_params(saved)
        return merge(params, changed), []
    before = _flat(params)
    if cfg.tower_lit:
        params, hist = _lit(model, cfg, params, pre, captions, workdir, mesh)
    else:
        params, hist = _align(model, cfg, params, pre, captions, workdir, mesh)
    changed = {k: v for k, v in _flat(params).items() if before.get(k) is not v}
    save_params(saved, flax.traverse_util.unflatten_dict(changed),
                {"stage": "lit" if cfg.tower_lit else "align"})
    return params, hist


def _lit_pair(m: MagicLens, delta, x, z, ft, *, kind: str):
    """(image, caption) unit embeddings with the tower's last layer tuned by `delta`."""
    from trainer import tower
    from trainer.models.fusion import l2_normalize

    i, t = m.project_features(tower.pooled_from_cache(kind, delta, x, z), ft)
    return l2_normalize(i), l2_normalize(t)


def _lit(model: MagicLens, cfg: TrainConfig, params: Any, pre: Any,
         captions: list[tuple[str, str]], workdir: Path, mesh: Mesh) -> tuple[Any, list]:
    """Stage 1 with the tower learning (LiT, locked text): a CLIP loss over (image, caption)
    pairs trains the image tower's last layer (a `cfg.tower_lit` delta, merged into the
    tower afterwards) and both projections; the text tower stays as pretrained.

    Why: the pooled ImageNet features do not carry what the captions name (a country, a
    style); the last layer is the cheapest part of the tower that can learn it on 2 cores."""
    from trainer import tower
    from trainer.text_query import pair_features

    if not hasattr(model.backbone_def, "last_input"):
        raise ValueError("tower_lit needs the compact backbone (MobileNetV2)")
    _, ft, img_idx, txt_idx = pair_features(model, params, pre, captions, workdir)
    x = tower.cached_inputs(workdir / "lit_inputs.npz", model, params, pre,
                            sorted({p for p, _ in captions}), progress=True, dtype=np.float16)
    kernel, bias = tower.base_layer(params)
    z = tower.precompute_z(x, kernel, bias)
    shapes = feature_param_shapes(model, kernel.shape[1], ft.shape[1],
                                  MagicLens.project_features)
    acfg = dataclasses.replace(cfg, learn_temperature=False, temperature=cfg.align_temperature)
    trainable = init_trainable(subset(params, shapes), acfg)
    trainable["tower"] = tower.init_delta(cfg.tower_lit, kernel.shape[0], kernel.shape[1],
                                          cfg.tower_rank, jax.random.PRNGKey(cfg.seed + 5))
    opt = _with_tower_rate(make_optimizer(acfg, cfg.tower_lit_steps, cfg.align_learning_rate),
                           make_optimizer(acfg, cfg.tower_lit_steps,
                                          cfg.tower_lit_learning_rate))
    data_sh = NamedSharding(mesh, P("data"))
    step_fn = make_step(model, acfg, opt, functools.partial(_lit_pair, kind=cfg.tower_lit),
                        losses.clip_symmetric, mesh, 3)

    def get_batch(s: int):
        idx = batch_indices(cfg.seed + 1, s, len(captions), cfg.batch_size)
        ii = img_idx[idx]
        return tuple(jax.device_put(a, data_sh) for a in (x[ii], z[ii], ft[txt_idx[idx]]))

    trainable, _, hist = _run_loop(step_fn, trainable, opt.init(trainable), get_batch, 0,
                                   cfg.tower_lit_steps, cfg.batch_size, "lit")
    trainable = jax.device_get(trainable)
    params = merge(params, trainable["model"])
    return tower.merge_into(params, cfg.tower_lit, trainable["tower"]), hist


def _retuned_features(model: MagicLens, params: Any, pre: Any, images: Sequence[str],
                      fi: np.ndarray, workdir: Path) -> np.ndarray:
    """The training images' features through the tower's tuned last layer (`params`), with
    their colour histograms unchanged."""
    from trainer import tower

    x = tower.cached_inputs(workdir / "tower_inputs.npz", model, params, pre, images,
                            progress=True, dtype=np.float16)
    return tower.features_through(model, params, x, fi)


def _with_tower_rate(head: optax.GradientTransformation,
                     tower_opt: optax.GradientTransformation) -> optax.GradientTransformation:
    """One optimizer for a trainable tree whose "tower" entry has its own schedule."""
    return optax.multi_transform(
        {"head": head, "tower": tower_opt},
        lambda t: {k: jax.tree_util.tree_map(lambda _, k=k: "tower" if k == "tower"
                                             else "head", v) for k, v in t.items()})


def main(argv: list[str] | None = None) -> TrainResult:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="compact", help="trainer/configs/<name>.py")
    ap.add_argument("--triples", required=True, help="JSONL of training triples")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--mode", choices=["frozen", "full"])
    ap.add_argument("--captions", help="JSONL of {image, text} for the alignment stage")
    ap.add_argument("--eval-triples", help="held-out JSONL triples: Recall@K + baselines")
    ap.add_argument("--init", help="start from an exported checkpoint dir (trainer.checkpoints)")
    a = ap.parse_args(argv)
    overrides = {k: v for k, v in (("steps", a.steps), ("mode", a.mode),
                                   ("batch_size", a.batch_size)) if v is not None}
    cfg = get_config(a.config, **overrides)
    init, arch = None, None
    if a.init:
        from trainer.models.magiclens import abstract_params, config_for_checkpoint

        arch = config_for_checkpoint(json.loads((Path(a.init) / META_FILE).read_text()))
        m, pre = build_model(cfg.model, config=arch)
        init, _ = load_params(a.init, abstract_params(m, pre.image_size))
    result = train(cfg, JsonlTriples(a.triples), a.workdir,
                   captions=read_captions(a.captions) if a.captions else None,
                   eval_triples=JsonlTriples(a.eval_triples) if a.eval_triples else None,
                   init_params=init, model_config=arch)
    print(f"checkpoint: {result.checkpoint}")
    for k, v in sorted(result.metrics.items()):
        print(f"{k}: {v:.4f}")
    return result


if __name__ == "__main__":
    main()
