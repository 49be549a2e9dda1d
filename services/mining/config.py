"""Mining settings: every limit the miner enforces on untrusted web content is a setting.

Environment names are `MAGICLENS_MINING_*` (e.g. `MAGICLENS_MINING_ALLOW_HOSTS`).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from runtime import ports
from runtime.config import BaseServiceSettings
from runtime.limits import MAX_IMAGE_PIXELS
from runtime.near_duplicates import COLOUR_THRESHOLD, PHASH_THRESHOLD
from runtime.topics import IMAGES_DELETED, PAGES_DISCOVERED


class MiningSettings(BaseServiceSettings):
    grpc_port: int = Field(default=ports.MINING.grpc, ge=0, le=65535)
    metrics_port: int = Field(default=ports.MINING.metrics, ge=0, le=65535)

    # Which topic/group to consume (overridable so tests and benchmarks run in isolation).
    mining_pages_topic: str = PAGES_DISCOVERED.name
    mining_images_deleted_topic: str = IMAGES_DELETED.name  # takedowns announce here
    mining_purge_interval_s: float = Field(default=30.0, gt=0)  # deleted images' blobs
    mining_group: str = "magiclens-mining"
    mining_worker_id: str = ""  # default: host:pid

    # SSRF: "host:port" or "host" entries that may resolve to private/loopback addresses.
    mining_allow_hosts: str = ""
    mining_allow_private: bool = False  # allow every private address (never in production)

    # Fetching.
    mining_connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    mining_read_timeout_s: float = Field(default=10.0, gt=0, le=120)
    mining_fetch_deadline_s: float = Field(default=30.0, gt=0, le=300)
    mining_max_html_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    mining_max_image_bytes: int = Field(default=15 * 1024 * 1024, ge=1024)
    mining_max_redirects: int = Field(default=5, ge=0, le=20)
    mining_per_host_concurrency: int = Field(default=2, ge=1, le=64)
    mining_per_host_delay_s: float = Field(default=0.02, ge=0, le=10)
    mining_fetch_threads: int = Field(default=4, ge=1, le=64)
    mining_user_agent: str = "MagicLensMiner/0.1 (+https://github.com/magiclens)"

    # Parsing and image policy.
    mining_max_images_per_page: int = Field(default=60, ge=1, le=10_000)
    mining_max_data_uri_bytes: int = Field(default=256 * 1024, ge=0)
    mining_max_image_pixels: int = Field(default=MAX_IMAGE_PIXELS, ge=10_000)
    mining_min_side: int = Field(default=64, ge=1)
    mining_max_aspect: float = Field(default=4.0, ge=1.0)
    mining_max_svg_bytes: int = Field(default=1024 * 1024, ge=1024)
    mining_svg_render_px: int = Field(default=512, ge=64, le=4096)
    mining_max_svg_render_pixels: int = Field(default=4 * 1024 * 1024, ge=4096,
                                              le=64 * 1024 * 1024)
    # Page submission (SubmitPages) per caller: a bucket of this many URLs, refilled at
    # the rate below (runtime/ratelimit.py); a sitemap or WARC costs the pages it yields.
    mining_submit_burst_urls: int = Field(default=20_000, ge=1)
    mining_submit_urls_per_minute: float = Field(default=1200.0, gt=0)
    # The SVG render child's address-space cap and time limit (services/mining/svgrender.py).
    mining_svg_memory_cap_bytes: int = Field(default=512 * 1024 * 1024, ge=64 * 1024 * 1024)
    mining_svg_render_timeout_s: float = Field(default=20.0, gt=0, le=600)

    # Dedupe and pairs.
    # Near-duplicate thresholds (runtime/near_duplicates.py; the search root's default too).
    mining_phash_threshold: int = Field(default=PHASH_THRESHOLD, ge=0, le=32)
    mining_colour_threshold: int = Field(default=COLOUR_THRESHOLD, ge=0, le=255)
    mining_max_pairs_per_page: int = Field(default=30, ge=0, le=10_000)
    mining_reconcile_min_age_s: float = Field(default=5.0, ge=0)
    mining_max_attempts: int = Field(default=3, ge=1, le=100)
    # A failed page (DNS, timeout, network) is retried after this, doubling per attempt.
    mining_retry_backoff_s: float = Field(default=60.0, ge=0)

    @field_validator("mining_allow_hosts")
    @classmethod
    def _hosts(cls, v: str) -> str:
        for entry in filter(None, (e.strip() for e in v.split(","))):
            host, sep, port = entry.rpartition(":") if entry.count(":") == 1 else ("", "", "")
            if sep and (not host or not port.isdigit()):
                raise ValueError(f"'{entry}' is not host or host:port")
        return v

    def allowed_hosts(self) -> set[str]:
        return {e.strip().lower() for e in self.mining_allow_hosts.split(",") if e.strip()}
