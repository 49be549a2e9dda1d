"""Instruction writers behind one interface (`base.InstructionWriter`), chosen by config."""

from __future__ import annotations

from services.triplegen.writers.base import InstructionWriter
from services.triplegen.writers.llm import LlmWriter
from services.triplegen.writers.metadata import MetadataWriter


def make_writer(name: str, settings=None) -> InstructionWriter:
    """`metadata` (offline default) or `llm` (an OpenAI-compatible chat endpoint)."""
    if name == "metadata":
        return MetadataWriter()
    if name == "llm":
        if settings is None:
            raise ValueError("the llm writer needs settings")
        return LlmWriter.from_settings(settings)
    raise ValueError(f"unknown writer {name!r} (metadata | llm)")
