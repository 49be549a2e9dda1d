"""Search settings (`MAGICLENS_*`, see README.md): one class per process, shard and root."""

from __future__ import annotations

from pydantic import Field

from runtime import ports
from runtime.config import BaseServiceSettings
from runtime.near_duplicates import COLOUR_THRESHOLD, PHASH_THRESHOLD
from services.search.index import DEFAULT_BRUTE_THRESHOLD


class ShardSettings(BaseServiceSettings):
    index: str = "default"
    shard: int = Field(default=0, ge=0)
    num_shards: int = Field(default=1, ge=1, le=1024)
    brute_threshold: int = Field(default=DEFAULT_BRUTE_THRESHOLD, ge=1)
    leaves_frac: float = Field(default=0.1, gt=0, le=1)
    sync_interval_s: float = Field(default=30.0, gt=0)
    version_check_s: float = Field(default=2.0, gt=0)
    bluegreen_min_coverage: float = Field(default=0.98, ge=0, le=1)


class RootSettings(BaseServiceSettings):
    grpc_port: int = Field(default=ports.SEARCH_ROOT.grpc, ge=0, le=65535)
    shards: str = ports.shard_addrs(2)
    triton_url: str = ports.TRITON_ADDR
    shard_timeout_s: float = Field(default=1.0, gt=0)
    embed_timeout_s: float = Field(default=10.0, gt=0)
    url_allowlist: str = ""  # comma-separated hosts whose images may be fetched by URL
    url_fetch_timeout_s: float = Field(default=5.0, gt=0)
    # Leaving the query image's copies out of the hits: ask the shards for k + margin, ask
    # again (4x as many) while copies leave fewer than k, at most `duplicate_rounds` times.
    duplicate_margin: int = Field(default=20, ge=0, le=1000)
    duplicate_rounds: int = Field(default=3, ge=1, le=5)
    duplicate_phash_threshold: int = Field(default=PHASH_THRESHOLD, ge=0, le=32)
    duplicate_colour_threshold: int = Field(default=COLOUR_THRESHOLD, ge=0, le=255)
    # Admission: at most `max_inflight` searches run at once (enough for Triton's dynamic
    # batcher to group them); the rest wait up to `queue_wait_s` for a slot, then get
    # RESOURCE_EXHAUSTED instead of piling up behind one another for seconds.
    max_inflight: int = Field(default=8, ge=1, le=1024)
    queue_wait_s: float = Field(default=0.5, ge=0, le=30)
    # Calls that may wait for a slot at once; more are refused with RESOURCE_EXHAUSTED
    # without waiting (the gRPC server's own limit).
    max_queued: int = Field(default=56, ge=0, le=4096)
    db_pool_size: int = Field(default=8, ge=1, le=100)
