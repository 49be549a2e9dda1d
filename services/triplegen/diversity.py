"""Lexical diversity of instructions: distinct n-grams (n = 1, 2, 3).

Reported two ways: distinct n-grams in a sample of 1,000 instructions (so corpora of different
sizes compare), and distinct / total n-grams over all instructions.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def diversity(instructions: Sequence[str], sample: int = 1000, seed: int = 0) -> dict:
    toks = [re.findall(r"[a-z0-9'-]+", s.lower()) for s in instructions]
    rng = random.Random(seed)
    picked = toks if len(toks) <= sample else rng.sample(toks, sample)
    out: dict = {"instructions": len(instructions), "sample": len(picked),
                 "distinct_instructions": len({" ".join(t) for t in toks})}
    for n in (1, 2, 3):
        all_ng = [g for t in toks for g in _ngrams(t, n)]
        # distinct n-grams among (up to) 1,000 instructions: "per 1k" when sample == 1000
        out[f"distinct_{n}_in_sample"] = len({g for t in picked for g in _ngrams(t, n)})
        out[f"distinct_{n}_ratio"] = round(len(set(all_ng)) / max(1, len(all_ng)), 4)
    return out
