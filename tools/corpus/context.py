"""Build context: size knobs, the fetcher, the render cache and the asset registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tools.corpus.fetch import Fetcher
from tools.corpus.model import Asset, Page
from tools.corpus.render import RenderCache

# Caps per size. None means "everything". Chosen so small ~250 images, medium ~900 (every
# relation the held-out queries test, sized for the 30-minute demo on 2 cores), default ~2.5k.
SIZES: dict[str, dict[str, int | None]] = {
    "small": {
        "emoji_subgroups": 3, "emoji_per_page": 6, "variant_bases": 2, "style_concepts": 5,
        "flag_subregions": 3, "landmark_countries": 3, "farm_animals": 3, "world_boards": 1,
        "categories": 1, "clip_folders": 2, "stamp_folders": 2, "gallery_max": 6,
        "max_parts": 1,
    },
    "medium": {
        "emoji_subgroups": 8, "emoji_per_page": 10, "variant_bases": 8, "style_concepts": 14,
        "flag_subregions": 10, "landmark_countries": None, "farm_animals": None,
        "world_boards": 1, "categories": 3, "clip_folders": 8, "stamp_folders": 8,
        "gallery_max": 10, "max_parts": 1,
    },
    "default": {
        "emoji_subgroups": 22, "emoji_per_page": 14, "variant_bases": 24, "style_concepts": 40,
        "flag_subregions": None, "landmark_countries": None, "farm_animals": None,
        "world_boards": None, "categories": None, "clip_folders": 30, "stamp_folders": 24,
        "gallery_max": 14, "max_parts": 1,
    },
    "full": {
        "emoji_subgroups": None, "emoji_per_page": 40, "variant_bases": None,
        "style_concepts": None, "flag_subregions": None, "landmark_countries": None,
        "farm_animals": None, "world_boards": None, "categories": None, "clip_folders": None,
        "stamp_folders": None, "gallery_max": 40, "max_parts": None,
    },
}


@dataclass
class Context:
    size: str
    fetcher: Fetcher
    render: RenderCache
    assets: dict[str, Asset] = field(default_factory=dict)
    pages: list[Page] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    sources_used: dict[str, dict[str, str]] = field(default_factory=dict)

    def cap(self, name: str) -> int | None:
        return SIZES[self.size][name]

    def take(self, items: list, name: str) -> list:
        n = self.cap(name)
        return items if n is None else items[:n]

    def parts(self, items: list, size_name: str) -> list[list]:
        """Split a long listing into pages of ``size_name`` items (``max_parts`` of them)."""
        n = self.cap(size_name) or 40
        chunks = [items[i : i + n] for i in range(0, len(items), n)]
        return self.take(chunks, "max_parts")

    def add(self, asset: Asset) -> str:
        old = self.assets.setdefault(asset.id, asset)
        if old.cache_key != asset.cache_key:
            raise RuntimeError(f"two different images share the id {asset.id}")
        return asset.id

    @property
    def cache_root(self) -> Path:
        return self.fetcher.cache
