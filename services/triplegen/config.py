"""Triplegen settings (environment MAGICLENS_*, see README.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from runtime import ports
from runtime.config import BaseServiceSettings


class TripleGenSettings(BaseServiceSettings):
    grpc_port: int = Field(default=ports.TRIPLEGEN.grpc, ge=0, le=65535)
    metrics_port: int = Field(default=ports.TRIPLEGEN.metrics, ge=0, le=65535)

    triplegen_writer: Literal["metadata", "llm"] = "metadata"
    triplegen_instructions_per_pair: int = Field(default=2, ge=1, le=5)
    # Pair filter: cosine of L2-normalised MobileNetV2 pooled features. Chosen from the
    # distribution on the demo corpus (README: same-page pairs 0.24-1.0, median 0.67;
    # random pairs 1st percentile 0.30; skin-tone variants 0.77-1.0, so the top stays high).
    triplegen_sim_min: float = Field(default=0.30, ge=-1.0, le=1.0)
    triplegen_sim_max: float = Field(default=0.98, ge=-1.0, le=1.0)
    triplegen_min_side: int = Field(default=32, ge=1, le=4096)
    triplegen_reconcile_limit: int = Field(default=200, ge=1, le=100_000)
    triplegen_consumer_group: str = ""  # default magiclens-triplegen (tests use unique ones)

    llm_base_url: str = ""  # e.g. http://127.0.0.1:8000 (the writer appends /v1/chat/completions)
    llm_model: str = ""
    llm_api_key: str = ""
    llm_timeout_s: float = Field(default=30.0, gt=0, le=600)
    llm_max_retries: int = Field(default=4, ge=0, le=20)
    llm_backoff_s: float = Field(default=1.0, ge=0, le=60)
    llm_concurrency: int = Field(default=4, ge=1, le=64)
    llm_temperature: float = Field(default=0.7, ge=0, le=2)

    @model_validator(mode="after")
    def _check(self) -> TripleGenSettings:
        if self.triplegen_sim_min >= self.triplegen_sim_max:
            raise ValueError("MAGICLENS_TRIPLEGEN_SIM_MIN must be below "
                             "MAGICLENS_TRIPLEGEN_SIM_MAX")
        if self.triplegen_writer == "llm" and not (self.llm_base_url and self.llm_model):
            raise ValueError("the llm writer needs MAGICLENS_LLM_BASE_URL and "
                             "MAGICLENS_LLM_MODEL")
        return self
