"""Builds the triplegen context and service from settings (shared by every entry point)."""

from __future__ import annotations

from runtime.blobstore import open_blobstore
from services.triplegen.annotate import Annotator
from services.triplegen.config import TripleGenSettings
from services.triplegen.filtering import FilterConfig
from services.triplegen.pipeline import Context
from services.triplegen.writers import make_writer
from services.triplegen.writers.metadata import MetadataWriter


def build_context(settings: TripleGenSettings, annotate: bool = True) -> Context:
    writers = {"metadata": MetadataWriter(settings.triplegen_instructions_per_pair)}
    if settings.llm_base_url and settings.llm_model:
        writers["llm"] = make_writer("llm", settings)
    return Context(
        blobs=open_blobstore(settings.blob_root),
        annotator=Annotator() if annotate else None,
        writers=writers, default_writer=settings.triplegen_writer,
        filter=FilterConfig(settings.triplegen_sim_min, settings.triplegen_sim_max,
                            settings.triplegen_min_side))
