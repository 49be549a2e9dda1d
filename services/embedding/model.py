"""Load a MagicLens checkpoint and encode raw inputs: the one model path serving uses.

Why here (not in trainer/): serving needs raw-bytes decoding with size limits, a fixed set of
jit batch shapes (so the Triton server never recompiles under load) and params that can be
swapped while requests run. Everything model-related is delegated to trainer's public API
(build_model, abstract_params, load_params, the backbone's Preprocessor), so preprocessing is
identical to training. Imports only numpy/jax/flax/PIL: it runs in both environments.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from runtime.image_input import BadInput, decode_image
from runtime.limits import MAX_INSTRUCTION_CHARS
from trainer.checkpoints import load_params, save_params
from trainer.models.backbone import CompactBackbone
from trainer.models.magiclens import (
    abstract_params,
    arch_meta,
    build_model,
    config_for_checkpoint,
    pretrained_params,
)
from trainer.weights.compact import weights_dir

# jit shapes. A batch is cut into bucket-sized chunks (13 = 8 + 4 + 1), never padded: on a
# CPU a padded image costs as much as a real one, and a batch of 5 padded to 16 tripled the
# work under concurrent load.
BATCH_BUCKETS = (1, 2, 4, 8, 16)
# Instruction lengths (tokens) the text tower is compiled for, when the backbone's text
# tower allows any length (MiniLM: masked attention, masked mean): an instruction of 6
# tokens runs at 8 instead of the tokenizer's 64 (6 ms instead of 28 on this CPU).
TEXT_BUCKETS = (8, 16, 32, 64)
TEXT_CACHE_SIZE = 4096  # instructions whose text-tower features are kept per model version
# Where the image tower runs. "onnxruntime" (the default): the compact backbone's MobileNetV2
# on onnxruntime (services/embedding/onnx_tower.py), ~2x the images per CPU second of
# XLA:CPU and the same features within 1e-4 (issue 16; docs/performance.md); other backbones
# (CLIP), JAX on a GPU and a missing onnxruntime fall back to JAX. "jax": always the jitted
# Flax tower.
IMAGE_RUNTIME_ENV = "MAGICLENS_IMAGE_RUNTIME"
IMAGE_RUNTIMES = ("onnxruntime", "jax")

log = logging.getLogger(__name__)
_TOWER_LOCK = threading.Lock()
NO_TEXT_PATH = "this model version has no text-only path"


@functools.cache
def _decode_threads() -> int:
    from services.embedding.onnx_tower import available_cores

    return available_cores()


@functools.cache
def _decoders() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_decode_threads(), thread_name_prefix="decode")


class NoTextPathError(BadInput):
    """A text-only query for a model version without a text-query head (every export made
    before trainer.text_query existed). Clients recognise it by this class name."""


def enable_compile_cache() -> None:
    """Persist XLA compilations (keyed by jax version, shapes and flags) so restarts of the
    server, the tests and the benches do not recompile the towers (~10 s per batch shape)."""

    cache = os.environ.get("MAGICLENS_JAX_CACHE_DIR",
                           str(weights_dir().parent / "cache" / "jax"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def chunks(n: int, ready: set[int] | frozenset[int] = frozenset(BATCH_BUCKETS)) -> list[int]:
    """Sizes among the `ready` (compiled) buckets that add up to `n`, largest first; 1 is
    always ready, so every n splits exactly."""
    out = []
    for b in sorted(ready | {1}, reverse=True):
        while n >= b:
            out.append(b)
            n -= b
    return out


def text_bucket(length: int, text_len: int) -> int:
    """The shortest compiled instruction length that holds `length` tokens."""
    for b in TEXT_BUCKETS:
        if length <= b <= text_len:
            return b
    return text_len


class TextFeatureCache:
    """LRU of instruction -> text-tower features. The text tower does not see the image, and
    people reuse instructions ("the same but red"), so a repeat costs nothing."""

    def __init__(self, size: int = TEXT_CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, text: str) -> np.ndarray | None:
        with self._lock:
            v = self._items.get(text)
            if v is None:
                self.misses += 1
                return None
            self._items.move_to_end(text)
            self.hits += 1
            return v

    def put(self, text: str, value: np.ndarray) -> None:
        with self._lock:
            self._items[text] = value
            self._items.move_to_end(text)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


@dataclass
class LoadedModel:
    """A checkpoint bound to its jitted encoders. Params are an argument of the jitted
    functions, so a new version of the same config swaps without recompiling.

    Both encoders run the image tower once (`_image`) and then a head: a query's head
    (`encode_features`) takes text features that come from `TextFeatureCache`, computed one
    instruction at a time at the instruction's own length (on a CPU a batch of texts is no
    cheaper per text); a target's head (`encode_target_features`) takes the empty string's.
    These are the functions the model's `encode_query`/`encode_target` compose, so results
    match them (tests/serving/test_serving_model_paths.py).

    The image tower itself runs on onnxruntime where the backbone is the compact one
    (`onnx_tower`, any batch size, no compiling; features equal the Flax tower's within
    1e-4), on JAX otherwise or with `image_runtime="jax"` (then exactly the model's numbers).

    Only batch sizes in `ready` run (larger batches are cut into them): `warmup()` compiles
    size 1, `warm_rest()` the others in the background, so no request ever waits for XLA."""

    model_version: str
    config_name: str
    params: Any
    model: Any
    preprocessor: Any
    _image: Any = None
    _text: Any = None
    _head: Any = None
    _target_head: Any = None
    _text_query_head: Any = None
    text_cache: TextFeatureCache | None = None
    ready: set[int] | None = None  # compiled batch sizes; shared by hot-swapped versions
    text_ready: set[int] | None = None  # compiled instruction lengths
    # "onnxruntime" or "jax" (IMAGE_RUNTIMES); "" reads MAGICLENS_IMAGE_RUNTIME
    image_runtime: str = ""
    _tower: Any = None  # the OnnxImageTower of these params; False: the image tower runs on JAX
    _colour: Any = None  # pooled tower output + pixels -> image features (colour histogram)

    def __post_init__(self) -> None:
        m = self.model
        self.image_runtime = self.image_runtime or os.environ.get(IMAGE_RUNTIME_ENV,
                                                                  IMAGE_RUNTIMES[0])
        if self.image_runtime not in IMAGE_RUNTIMES:
            raise ValueError(f"{IMAGE_RUNTIME_ENV}={self.image_runtime!r}; choose one of "
                             f"{IMAGE_RUNTIMES}")
        self._image = jax.jit(lambda p, x: m.apply({"params": p}, x,
                                                   method=m.image_features_only))
        if getattr(m.backbone_def, "colour_bins", 0):
            self._colour = jax.jit(lambda p, pooled, x: m.apply(
                {"params": p}, pooled, x, method=lambda mod, pooled, x:
                mod.encoder.with_colour(pooled, x)))
        self._text = jax.jit(lambda p, t: m.apply({"params": p}, t,
                                                  method=m.text_features_only))
        self._head = jax.jit(lambda p, fi, ft: m.apply({"params": p}, fi, ft,
                                                       method=m.encode_features))
        self._target_head = jax.jit(lambda p, fi, ft: m.apply(
            {"params": p}, fi, ft, method=m.encode_target_features))
        self._text_query_head = jax.jit(lambda p, ft: m.apply(
            {"params": p}, ft, method=m.encode_text_query_features))
        self.text_cache = TextFeatureCache()
        self.ready, self.text_ready = set(), set()

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    @property
    def image_size(self) -> int:
        return self.preprocessor.image_size

    @property
    def variable_text_length(self) -> bool:
        """Whether the text tower gives the same features for any padded length."""
        return bool(getattr(self.model.backbone_def, "variable_text_length", False))

    def preprocess_images(self, images: list[bytes]) -> np.ndarray:
        """Encoded images -> [B,H,W,3] model input. A batch is decoded on one thread per
        core: Pillow's decoders and resize release the GIL, and in one thread a batch of 16
        photos took as long to decode as the tower took to embed it on two cores
        (docs/performance.md, "Re-embedding")."""
        run = _decoders().map if len(images) > 1 and _decode_threads() > 1 else map
        return self.preprocessor.images(list(run(decode_image, images)), map_fn=run)

    def tokens(self, instructions: list[str]) -> np.ndarray:
        for t in instructions:
            if len(t) > MAX_INSTRUCTION_CHARS:
                raise BadInput(f"instruction has {len(t)} characters; limit "
                               f"{MAX_INSTRUCTION_CHARS}")
        return self.preprocessor.texts(instructions)

    def _run(self, fn, *arrays: np.ndarray) -> np.ndarray:
        out, start = [], 0
        for size in chunks(arrays[0].shape[0], frozenset(self.ready)):
            out.append(np.asarray(fn(self.params, *[a[start:start + size] for a in arrays])))
            start += size
        return np.concatenate(out).astype(np.float32)

    def _text_lengths(self) -> list[int]:
        full = self.preprocessor.text_len
        if not self.variable_text_length:
            return [full]
        return sorted({b for b in TEXT_BUCKETS if b < full} | {full})

    def _text_one(self, tokens: np.ndarray) -> np.ndarray:
        """[1, L] tokens -> [F] features, at the shortest compiled length that holds them."""
        tokens = tokens.astype(np.int32)
        if self.variable_text_length:
            used = int(np.max(np.nonzero(tokens[0])[0], initial=0)) + 1
            fits = [n for n in self._text_lengths() if n >= used and n in self.text_ready]
            tokens = tokens[:, :min(fits, default=tokens.shape[1])]
        return np.asarray(self._text(self.params, tokens))[0].astype(np.float32)

    def _text_features_of_tokens(self, tokens: np.ndarray) -> np.ndarray:
        return np.stack([self._text_one(tokens[i:i + 1]) for i in range(tokens.shape[0])])

    def text_features(self, instructions: list[str]) -> np.ndarray:
        """[B, F] text-tower features of the instructions, computed once per instruction."""
        found = [self.text_cache.get(t) for t in instructions]
        todo = sorted({t for t, f in zip(instructions, found, strict=True) if f is None})
        if todo:
            fresh = self._text_features_of_tokens(self.tokens(todo))
            computed = dict(zip(todo, fresh, strict=True))
            for t, f in computed.items():
                self.text_cache.put(t, f)
            found = [f if f is not None else computed[t]
                     for t, f in zip(instructions, found, strict=True)]
        return np.stack(found)

    def onnx_tower(self):
        """The image tower of these params on onnxruntime (built once per version, by
        `warmup`), or None where it runs on JAX: MAGICLENS_IMAGE_RUNTIME=jax, a backbone
        other than the compact one, JAX on an accelerator, or no onnxruntime."""
        if self._tower is None:
            with _TOWER_LOCK:
                if self._tower is None:
                    self._tower = self._build_tower() or False
        return self._tower or None

    def _build_tower(self):
        if self.image_runtime != "onnxruntime":
            return None
        if not isinstance(self.model.backbone_def, CompactBackbone):
            return None  # e.g. CLIP: no ONNX graph for it
        if jax.default_backend() != "cpu":
            return None  # an accelerator (the GPU overlay's server) runs JAX's tower there
        try:
            from services.embedding.onnx_tower import OnnxImageTower
        except ImportError as exc:
            log.warning("onnxruntime is not installed; the image tower runs on JAX (%s)", exc)
            return None
        return OnnxImageTower(jax.tree.map(np.asarray, self.params["backbone"]["image_tower"]))

    @property
    def image_runtime_used(self) -> str:
        """Where this version's image tower actually runs: "onnxruntime" or "jax"."""
        return "onnxruntime" if self.onnx_tower() is not None else "jax"

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        """[B, Fi] image-tower features of preprocessed images."""
        pixels = pixels.astype(np.float32)
        tower = self.onnx_tower()
        if tower is None:
            return self._run(self._image, pixels)
        pooled = tower.features(pixels)  # any batch size; no buckets needed
        if self._colour is None:
            return pooled
        return self._run(self._colour, pooled, pixels)

    def query_from_features(self, image_features: np.ndarray, text_features: np.ndarray
                            ) -> np.ndarray:
        """The head: tower features -> unit query embeddings."""
        return self._run(self._head, image_features, text_features)

    def encode_query_features(self, pixels: np.ndarray, text_features: np.ndarray
                              ) -> np.ndarray:
        return self.query_from_features(self.image_features(pixels), text_features)

    def encode_query_pixels(self, pixels: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return self.encode_query_features(pixels, self._text_features_of_tokens(tokens))

    def encode_query_texts(self, pixels: np.ndarray, instructions: list[str]) -> np.ndarray:
        """Preprocessed images + instruction strings (text features from the cache)."""
        return self.encode_query_features(pixels, self.text_features(instructions))

    @property
    def has_text_query(self) -> bool:
        """Whether this version answers text-only queries (trainer.models.text_head)."""
        return self.model.has_text_query

    def encode_text_queries(self, instructions: list[str]) -> np.ndarray:
        """Text-only queries -> unit embeddings in the index's space. NoTextPathError for a
        version without the head; BadInput for an empty or too long instruction."""
        if not self.has_text_query:
            raise NoTextPathError(NO_TEXT_PATH)
        if any(not t.strip() for t in instructions):
            raise BadInput("a text-only query needs a non-empty instruction")
        self.tokens(instructions)  # validates the length before anything runs
        return self._run(self._text_query_head, self.text_features(instructions))

    def encode_target_pixels(self, pixels: np.ndarray) -> np.ndarray:
        image_features = self.image_features(pixels)
        empty = np.repeat(self.text_features([""]), len(image_features), 0)
        return self._run(self._target_head, image_features, empty)

    def encode_query(self, images: list[bytes], instructions: list[str]) -> np.ndarray:
        return self.encode_query_texts(self.preprocess_images(images), instructions)

    def encode_target(self, images: list[bytes]) -> np.ndarray:
        return self.encode_target_pixels(self.preprocess_images(images))

    def _compile(self, batch: int) -> None:
        s = self.image_size
        x = np.zeros((batch, s, s, 3), np.float32)
        tower = self.onnx_tower()
        if tower is None:
            fi = np.asarray(self._image(self.params, x))
        else:  # onnxruntime needs no compiling; the colour histogram does
            fi = tower.features(x)
            if self._colour is not None:
                fi = np.asarray(self._colour(self.params, fi, x))
        ft = np.repeat(self.text_features([""]), batch, 0)
        jax.block_until_ready(self._head(self.params, fi, ft))
        jax.block_until_ready(self._target_head(self.params, fi, ft))
        if self.has_text_query:
            jax.block_until_ready(self._text_query_head(self.params, ft))
        self.ready.add(batch)

    def warmup(self) -> None:
        """Compile what one request of one image needs: batch size 1 and every instruction
        length (fast with the persistent compile cache; ~20 s cold), and build this
        version's onnxruntime image tower."""
        for length in self._text_lengths():
            jax.block_until_ready(self._text(self.params, np.zeros((1, length), np.int32)))
            self.text_ready.add(length)
        self._compile(1)

    def warm_rest(self, sizes: tuple[int, ...] = BATCH_BUCKETS) -> None:
        """Compile the other batch sizes, smallest first; each is used once it is ready.
        Run it in a background thread after serving starts (it takes minutes cold)."""
        for b in sorted(sizes):
            if b not in self.ready:
                self._compile(b)

    def with_params(self, model_version: str, params: Any) -> LoadedModel:
        """Same config and compiled functions (and so the same ready sizes), new params
        (for hot swap) and an empty text cache (features depend on the params)."""
        new = LoadedModel.__new__(LoadedModel)
        new.__dict__.update(self.__dict__)
        new.model_version, new.params = model_version, params
        new.text_cache = TextFeatureCache()
        new._tower = None  # the ONNX graph holds the old params; `warmup` builds the new one
        return new


def load_checkpoint(checkpoint_dir: str | Path, model_version: str | None = None,
                    image_runtime: str = "") -> LoadedModel:
    """Restore an exported checkpoint (trainer.checkpoints layout) with exact structure.
    `image_runtime`: "onnxruntime" or "jax" (default MAGICLENS_IMAGE_RUNTIME, else
    onnxruntime where the backbone allows)."""
    enable_compile_cache()
    checkpoint_dir = Path(checkpoint_dir)
    meta = json.loads((checkpoint_dir / "magiclens_meta.json").read_text())
    config_name = meta.get("config", "compact")
    model, pre = build_model(config_name, config=config_for_checkpoint(meta))
    params, _ = load_params(checkpoint_dir, abstract_params(model, pre.image_size))
    params = jax.tree.map(jnp.asarray, params)
    version = model_version or meta.get("model_version") or checkpoint_dir.name
    return LoadedModel(version, config_name, params, model, pre, image_runtime=image_runtime)


def create_initial_checkpoint(directory: str | Path, model_version: str, seed: int = 0,
                              config_name: str = "compact") -> Path:
    """Pretrained towers + randomly initialised fusion head (deterministic seed), saved as a
    checkpoint: a real, servable model version before any training has run."""
    model, pre = build_model(config_name)
    params = pretrained_params(model, jax.random.PRNGKey(seed), pre.image_size)
    return save_params(directory, params, {"config": config_name, "model_version": model_version,
                                           "seed": seed, "origin": "pretrained-towers+init",
                                           **arch_meta(model.config)})
