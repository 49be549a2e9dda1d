"""Checks every instruction must pass, whichever writer produced it.

Why: an instruction that names the target's file or exact title, carries a URL, or is not an
English sentence teaches the model a shortcut or noise; LLM output must be checked anyway.
"""

from __future__ import annotations

import re

from services.triplegen.meta import ImageMeta, clean

MIN_CHARS, MAX_CHARS = 8, 200
MIN_WORDS, MAX_WORDS = 2, 32
_STOP = frozenset({
    "a", "an", "the", "of", "in", "on", "at", "to", "from", "with", "without", "and", "or",
    "but", "it", "its", "this", "that", "these", "those", "same", "another", "other", "more",
    "less", "some", "any", "one", "find", "show", "me", "make", "give", "turn", "get", "as",
    "is", "are", "be", "for", "by", "into", "than", "like", "instead", "version", "picture",
    "image", "photo", "drawing", "where", "whose", "which", "who",
})
_URL_RE = re.compile(
    r"https?://|www\.|\b[\w-]+\.(?:com|org|net|io|png|jpe?g|gif|webp|svg|html?)\b", re.I)


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s'-]", " ", text.lower())).strip()


def check(instruction: str, target: ImageMeta) -> str | None:
    """Return why the instruction is unacceptable, or None when it is fine."""
    text = clean(instruction, 10_000)
    if not text:
        return "empty"
    if not MIN_CHARS <= len(text) <= MAX_CHARS:
        return f"length {len(text)} outside {MIN_CHARS}..{MAX_CHARS}"
    toks = text.split()
    if not MIN_WORDS <= len(toks) <= MAX_WORDS:
        return f"{len(toks)} words outside {MIN_WORDS}..{MAX_WORDS}"
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(c.isascii() for c in letters) / len(letters) < 0.9:
        return "not English"
    alpha = [t for t in normalise(text).split() if t.isalpha()]
    if len(alpha) < max(2, len(toks) // 2) or not any(t in _STOP for t in alpha):
        return "not English"
    if _URL_RE.search(text):
        return "contains a URL or file name"
    norm = f" {normalise(text)} "
    for title in target.titles():
        t = normalise(title)
        if t and len(t) >= 3 and f" {t} " in norm:
            return "leaks the target's title or file name"
    return None
