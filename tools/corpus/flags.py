"""Country flags (npm svg-country-flags) with geography from npm world-countries.

Pages mimic a geography site: one page per UN subregion listing each country's flag,
capital and neighbours, with a second section showing the flags of bordering countries
outside the subregion. Where OpenMoji draws the flag emoji, it is shown as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.corpus import render
from tools.corpus.context import Context
from tools.corpus.fetch import SourceUnavailable, unavailable
from tools.corpus.model import Asset, Figure, Page, slug, stable_hash

MAX_JSON_BYTES = 8 * 1024 * 1024


class Flags:
    def __init__(self, ctx: Context, countries: dict[str, dict[str, Any]], svg_dir: Path) -> None:
        self.ctx = ctx
        self.countries = countries  # cca3 -> record
        self.svg_dir = svg_dir

    def name(self, cca3: str) -> str:
        return self.countries[cca3]["name"]["common"]

    def asset(self, cca3: str) -> str | None:
        c = self.countries.get(cca3)
        if c is None:
            return None
        aid = f"flag/{cca3.lower()}"
        if aid in self.ctx.assets:
            return aid
        svg = self.svg_dir / f"{c['cca2'].lower()}.svg"
        if not svg.is_file() or svg.stat().st_size > render.MAX_SOURCE_BYTES:
            return None
        text = svg.read_text(encoding="utf-8")

        def produce(t: str = text) -> tuple[bytes, str]:
            return render.svg_to_png(t, 320), "png"

        name = self.name(cca3)
        self.ctx.add(Asset(
            id=aid, source="flags", produce=produce,
            cache_key=f"flag|{render.hashlib.sha256(text.encode()).hexdigest()}",
            alt=f"Flag of {name}", caption=f"The flag of {name}",
            truth={"type": "flag", "country": cca3, "country_name": name, "style": "flag",
                   "region": c.get("region", ""), "subregion": c.get("subregion", ""),
                   "borders": sorted(c.get("borders", []))},
            credit="svg-country-flags (Wikipedia renders)", license="Public domain",
        ))
        return aid


def load(ctx: Context) -> Flags | None:
    try:
        flags_pkg = ctx.fetcher.npm("svg-country-flags")
        geo_pkg = ctx.fetcher.npm("world-countries")
        raw = (geo_pkg / "countries.json").read_bytes()
        if len(raw) > MAX_JSON_BYTES:
            raise SourceUnavailable("countries.json too large")
        rows = json.loads(raw)
    except (SourceUnavailable, OSError, ValueError) as exc:
        ctx.failed["flags"] = str(exc)
        unavailable("flags", str(exc))
        return None
    countries = {r["cca3"]: r for r in rows if r.get("cca3") and r.get("cca2")}
    ctx.sources_used["flags"] = {
        "name": "svg-country-flags 1.2.10 (npm) + world-countries 5.1.0 (npm)",
        "license": "flags public domain; country data ODbL-1.0", "url":
        "https://github.com/hjnilsson/country-flags, https://github.com/mledoze/countries"}
    return Flags(ctx, countries, flags_pkg / "svg")


def _flag_emoji_asset(ctx: Context, cca2: str) -> str | None:
    es = getattr(ctx, "emoji_styles", None)
    cat = getattr(ctx, "emoji_catalog", {})
    hexcode = "-".join(f"{0x1F1E6 + ord(ch) - ord('A'):X}" for ch in cca2.upper())
    e = cat.get(hexcode)
    if es is None or e is None:
        return None
    aid = es.asset(e, "openmoji-color")
    if aid:
        t = ctx.assets[aid].truth
        t.update({"type": "flag", "country": None})
    return aid


def build(ctx: Context) -> Flags | None:
    fl = load(ctx)
    if fl is None:
        return None
    by_sub: dict[str, list[str]] = {}
    for cca3, c in fl.countries.items():
        if c.get("subregion"):
            by_sub.setdefault(c["subregion"], []).append(cca3)
    subs = sorted(by_sub, key=lambda s: (stable_hash("fs" + s), s))
    for sub in sorted(ctx.take(subs, "flag_subregions")):
        members = sorted(by_sub[sub], key=fl.name)
        figs: list[Figure] = []
        for cca3 in members:
            aid = fl.asset(cca3)
            if not aid:
                continue
            c = fl.countries[cca3]
            cap = ", ".join(c.get("capital") or []) or "no official capital"
            nb = [fl.name(b) for b in sorted(c.get("borders", [])) if b in fl.countries]
            text = (f"{fl.name(cca3)} ({c['name']['official']}); capital: {cap}. "
                    + (f"It borders {', '.join(nb)}." if nb else "It has no land borders."))
            figs.append(Figure(aid, f"Flag of {fl.name(cca3)}", text=text))
            em = _flag_emoji_asset(ctx, c["cca2"])
            if em:
                ctx.assets[em].truth["country"] = cca3
                ctx.assets[em].truth["country_name"] = fl.name(cca3)
                ctx.assets[em].truth["subregion"] = c.get("subregion", "")
        if not figs:
            continue
        outside = sorted({b for m in members for b in fl.countries[m].get("borders", [])
                          if b in fl.countries and b not in members}, key=fl.name)
        nfigs = [Figure(a, f"Neighbour: {fl.name(b)}") for b in outside if (a := fl.asset(b))]
        emoji_figs = []
        for cca3 in members:
            em = _flag_emoji_asset(ctx, fl.countries[cca3]["cca2"])
            if em:
                emoji_figs.append(Figure(em, f"{fl.name(cca3)} flag emoji (OpenMoji)"))
        sections = [("Neighbouring countries", nfigs)] if nfigs else []
        if emoji_figs and stable_hash("fe" + sub) % 2 == 0:
            sections.append(("The same flags as emoji", emoji_figs))
        region = fl.countries[members[0]].get("region", "")
        ctx.pages.append(Page(
            id=f"flags/{slug(sub)}", title=f"Flags of {sub}", source="flags", kind="flags",
            intro=[f"{sub} is a subregion of {region} with {len(members)} countries and "
                   "territories. Each flag below is shown with its capital and land borders.",
                   "Flags are public-domain renders; colours follow the official specifications."],
            figures=figs, sections=sections))
    return fl
