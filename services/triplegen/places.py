"""Country and region names in mined text, and what a writer knows about each country.

The offline writer's stand-in for an LLM's world knowledge: country names and the other ways
pages write them (official names, abbreviations such as "USA", demonyms), capitals, land
borders, regions and subregions, from data/countries.json (world-countries, ODbL-1.0;
`python -m tools.corpus.gazetteer` rewrites it). Facts then follow from which country an
image is of, however its page words them ("Flag of X", "X's national banner", "Belarusian
flag"), instead of from sentences a page happens to contain.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "countries.json"
MAX_DATA_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class Country:
    name: str
    capitals: tuple[str, ...]
    borders: tuple[str, ...]
    region: str
    subregion: str


def _alternation(names: list[str]) -> re.Pattern[str]:
    """Whole-word, case-sensitive (pages capitalise names; 'turkey' the bird is not one),
    longest first so 'Republic of the Congo' wins over 'Congo'."""
    alts = "|".join(re.escape(n) for n in sorted(set(names), key=lambda n: (-len(n), n)))
    return re.compile(rf"(?<![\w-])(?:the )?({alts})(?![\w-])")


class Gazetteer:
    def __init__(self, rows: list[dict]) -> None:
        self.countries = {r["name"]: Country(r["name"], tuple(r["capitals"]),
                                             tuple(r["borders"]), r["region"], r["subregion"])
                          for r in rows}
        self._name = {}
        for r in rows:
            for n in (r["name"], *r["aliases"]):
                self._name.setdefault(n, r["name"])
        self._demonym = {}
        for r in rows:
            for d in r["demonyms"]:
                self._demonym.setdefault(d, r["name"])
        self._regions = {c.subregion for c in self.countries.values() if c.subregion} | {
            c.region for c in self.countries.values() if c.region}

    @cached_property
    def _country_re(self) -> re.Pattern[str]:
        return _alternation(list(self._name))

    @cached_property
    def _demonym_re(self) -> re.Pattern[str]:
        return _alternation(list(self._demonym))

    @cached_property
    def _place_re(self) -> re.Pattern[str]:
        return _alternation([*self._name, *self._regions])

    def country(self, name: str | None) -> Country | None:
        return self.countries.get(self._name.get(name or "", ""))

    def countries_in(self, text: str) -> list[tuple[str, int, int]]:
        """(canonical country name, start, end) of every country named in `text`."""
        return [(self._name[m.group(1)], m.start(1), m.end(1))
                for m in self._country_re.finditer(text or "")]

    def demonyms_in(self, text: str) -> list[tuple[str, int, int]]:
        """(canonical country name, start, end) for 'Belarusian', 'French', ..."""
        return [(self._demonym[m.group(1)], m.start(1), m.end(1))
                for m in self._demonym_re.finditer(text or "")]

    def places_in(self, text: str) -> list[tuple[str, str, int]]:
        """(surface form, canonical key, start) of countries and world regions in `text`."""
        out = []
        for m in self._place_re.finditer(text or ""):
            surface = m.group(1)
            out.append((surface, self._name.get(surface, surface), m.start(1)))
        return out


@lru_cache(maxsize=1)
def gazetteer() -> Gazetteer:
    raw = DATA.read_bytes()
    if len(raw) > MAX_DATA_BYTES:
        raise ValueError(f"{DATA} is larger than {MAX_DATA_BYTES} bytes")
    return Gazetteer(json.loads(raw)["countries"])
