"""The writer interface: pairs with their metadata in, validated instructions out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.triplegen.meta import ImageMeta


@dataclass(frozen=True)
class PairContext:
    pair_id: int
    page_title: str
    page_url: str
    query: ImageMeta
    target: ImageMeta
    similarity: float | None = None


@dataclass(frozen=True)
class Instruction:
    text: str
    relation: str
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class WriteResult:
    pair_id: int
    instructions: list[Instruction] = field(default_factory=list)
    error: str | None = None
    retryable: bool = False  # transient failure (timeouts, 429/5xx): try the pair again later


class InstructionWriter(Protocol):
    name: str
    version: str
    model: str | None
    prompt_version: str | None

    def write(self, pairs: Sequence[PairContext]) -> list[WriteResult]:
        """One result per pair, in order; never raises for a single bad pair."""
        ...
