"""OpenAI CLIP's byte-level BPE tokenizer (lower-cased, ``</w>`` word ends, SOT/EOT tokens,
77-token context, 0-padded), reading OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.

Why: the clip_* backbones need CLIP's exact token ids. The vocab file (1.3 MB) is not committed;
it ships inside the ``open_clip_torch`` wheel. Get it without installing torch:

    pip download open_clip_torch==3.3.0 --no-deps -d /tmp/oc
    unzip -j /tmp/oc/open_clip_torch-*.whl open_clip/bpe_simple_vocab_16e6.txt.gz -d data/weights

Lookup order: explicit path, ``$MAGICLENS_CLIP_VOCAB``,
``data/weights/bpe_simple_vocab_16e6.txt.gz``, an installed ``open_clip`` package.
Differences from OpenAI's reference: ``ftfy.fix_text`` is
not applied (it only repairs mojibake), and the word regex runs through the ``tokenizers``
library's Oniguruma engine (same ``\\p{L}``/``\\p{N}`` classes).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
            r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
MAX_VOCAB_BYTES = 8 << 20
SOT_ID, EOT_ID = 49406, 49407  # the last two ids of the 49408-token vocab


class ClipVocabMissing(FileNotFoundError):
    """The BPE vocab file is not available; the message says how to get it."""


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte -> printable unicode character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def find_vocab(path: str | os.PathLike | None = None) -> Path:
    candidates = [path, os.environ.get("MAGICLENS_CLIP_VOCAB")]
    from trainer.weights.compact import weights_dir

    candidates.append(weights_dir() / VOCAB_NAME)
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / VOCAB_NAME)
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise ClipVocabMissing(
        f"CLIP tokenizer vocab {VOCAB_NAME} not found. ./taskw extracts it into data/weights "
        "from the open_clip_torch wheel; by hand: "
        "`pip download open_clip_torch==3.3.0 --no-deps -d /tmp/oc && unzip -j "
        f"/tmp/oc/open_clip_torch-*.whl open_clip/{VOCAB_NAME} -d data/weights` "
        "(or set MAGICLENS_CLIP_VOCAB).")


class ClipTokenizer:
    def __init__(self, vocab_path: str | os.PathLike):
        from tokenizers import Regex
        from tokenizers.pre_tokenizers import Split

        raw = Path(vocab_path).read_bytes()
        if len(raw) > MAX_VOCAB_BYTES:
            raise ValueError(f"{vocab_path}: too large for a BPE vocab")
        lines = gzip.decompress(raw).decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : NUM_MERGES + 1] if m.strip()]
        if any(len(m) != 2 for m in merges):
            raise ValueError(f"{vocab_path}: malformed merge lines")
        self.byte_encoder = _bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]
        self._split = Split(Regex(_PATTERN), behavior="removed", invert=True)

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - bounded, tokenizer lives for the process
    def _bpe(self, token: str) -> tuple[str, ...]:
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str) -> list[int]:
        """Text -> BPE ids without SOT/EOT."""
        text = html.unescape(html.unescape(text))
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids: list[int] = []
        for piece, _ in self._split.pre_tokenize_str(text):
            tok = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(tok))
        return ids

    def __call__(self, texts: Sequence[str], context_length: int = 77) -> np.ndarray:
        """[B, context_length] int32: SOT, ids, EOT, zeros; too-long texts keep EOT last."""
        out = np.zeros((len(texts), context_length), dtype=np.int32)
        for row, t in enumerate(texts):
            ids = [*[self.sot, *self.encode(t)][: context_length - 1], self.eot]
            out[row, : len(ids)] = ids
        return out


@functools.lru_cache(maxsize=4)
def load_clip_tokenizer(vocab_path: str | None = None) -> ClipTokenizer:
    return ClipTokenizer(find_vocab(vocab_path))


def clip_tokenize_fn(vocab_path: str | None = None,
                     context_length: int = 77) -> Callable[[Sequence[str]], np.ndarray]:
    """A tokenize function that loads the vocab on first use, raising ClipVocabMissing (with
    instructions) if it cannot be found, so building a CLIP backbone never needs it."""

    def tokenize(texts: Sequence[str]) -> np.ndarray:
        if all(not t.strip() for t in texts):
            # [SOT, EOT] needs no vocab (their ids are fixed): target encoding works without it.
            out = np.zeros((len(texts), context_length), dtype=np.int32)
            out[:, :2] = (SOT_ID, EOT_ID)
            return out
        return load_clip_tokenizer(vocab_path)(texts, context_length)

    return tokenize
