"""Real photos from GCompris (Debian gcompris-qt-data), unpacked from Qt .rcc archives.

Monuments come with a title and a paragraph each and are grouped by country; farm
animals have both a photo and a drawing; categorisation sets are small photo galleries.
Per-file credits and licences are parsed from the README files shipped next to them.
"""

from __future__ import annotations

import re
from pathlib import Path

from tools.corpus import render
from tools.corpus.context import Context
from tools.corpus.fetch import SourceUnavailable, unavailable
from tools.corpus.model import Asset, Figure, Page, slug, stable_hash
from tools.corpus.rcc import RccError, read_rcc_file

ACT = "gcompris/src/activities/"
COUNTRY_DIRS = {"france": "FRA", "india": "IND", "usa": "USA", "germany": "DEU", "egypt": "EGY"}
WONDER_COUNTRY = {"chichenItza": "MEX", "christTheRedeemer": "BRA", "colosseum": "ITA",
                  "greatWallofChina": "CHN", "machuPicchu": "PER", "petra": "JOR",
                  "tajMahal": "IND"}
ANIMAL_EMOJI = {"cat": "1F408", "chicken": "1F414", "cow": "1F404", "dog": "1F415",
                "duck": "1F986", "horse": "1F40E", "owl": "1F989", "pig": "1F416",
                "sheep": "1F411", "bison": "1F9AC", "crocodile": "1F40A", "giraffe": "1F992",
                "hedgehog": "1F994", "kangaroo": "1F998", "koala": "1F428", "panda": "1F43C",
                "jaguar": "1F406", "moose": "1FACE", "scarlet_macaw": "1F99C",
                "polar_bear": "1F43B-200D-2744-FE0F", "dragon": "1F98E", "chameleon": "1F98E"}
CATEGORIES = ["fishes", "monuments", "others", "renewable", "tools"]
_ENTRY = re.compile(
    r'"title"\s*:\s*qsTr\("((?:[^"\\]|\\.)*)"\)\s*,\s*"text"\s*:\s*qsTr\("((?:[^"\\]|\\.)*)"\)'
    r'.*?"image2"\s*:\s*"qrc:/([^"]+)"', re.S)
_IMAGE1 = re.compile(r'"image"\s*:\s*"qrc:/([^"]+)"\s*,\s*"title"\s*:\s*qsTr\("([^"]+)"\)')


def parse_readme(text: str) -> dict[str, tuple[str, str, str]]:
    """README blocks -> {file name: (copyright, licence, source url)}."""
    out: dict[str, tuple[str, str, str]] = {}
    for block in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^(Copyright|License|Source):\s*(.+)$", block, re.M))
        files = block.split("Files:", 1)[1].split() if "Files:" in block else []
        for f in files:
            out[f] = (fields.get("Copyright", ""), fields.get("License", ""),
                      fields.get("Source", ""))
    return out


def parse_board(qml: str) -> list[tuple[str, str, str]]:
    """(title, paragraph, image path) triples from an explore_* board file."""
    return [(t.replace('\\"', '"'), x.replace('\\"', '"'), img)
            for t, x, img in _ENTRY.findall(qml)]


class _Rcc:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[str, dict[str, bytes]] = {}

    def files(self, name: str) -> dict[str, bytes]:
        if name not in self.cache:
            entries = read_rcc_file(str(self.root / f"{name}.rcc"))
            self.cache[name] = {e.path: e.data for e in entries}
        return self.cache[name]


def _photo_asset(ctx: Context, aid: str, data: bytes, alt: str, caption: str, truth: dict,
                 credit: tuple[str, str, str], fmt: str = "jpg", side: int = 512) -> str:
    def produce(d: bytes = data) -> tuple[bytes, str]:
        return render.raster(d, side, fmt), fmt

    who, lic, url = credit
    ctx.add(Asset(id=aid, source="gcompris", produce=produce,
                  cache_key=f"gc|{fmt}|{side}|{render.hashlib.sha256(data).hexdigest()}",
                  alt=alt, caption=caption, truth=truth,
                  credit=f"{who} ({url})" if url else who, license=lic or "see GCompris"))
    return aid


def build(ctx: Context, flags: object | None) -> None:
    try:
        root = ctx.fetcher.deb("gcompris-qt-data") / "usr/share/gcompris-qt/rcc"
        rcc = _Rcc(root)
        rcc.files("explore_monuments")
    except (SourceUnavailable, RccError, OSError) as exc:
        ctx.failed["gcompris"] = str(exc)
        unavailable("gcompris", str(exc))
        return
    ctx.sources_used["gcompris"] = {
        "name": "GCompris 3.1 data (Debian gcompris-qt-data)",
        "license": "photos: CC-BY-SA-4.0 / CC0 / public domain per file (see credits)",
        "url": "https://gcompris.net/"}
    _monuments(ctx, rcc, flags)
    _farm(ctx, rcc)
    _world(ctx, rcc)
    _categories(ctx, rcc)


def _monuments(ctx: Context, rcc: _Rcc, flags: object | None) -> None:
    files = rcc.files("explore_monuments")
    base = ACT + "explore_monuments/resource/"
    credits = parse_readme(files.get(base + "README", b"").decode("utf-8", "replace"))
    by_country: dict[str, list[tuple[str, str, str]]] = {}
    for name in sorted(files):
        if "/board/board" in name:
            for title, text, img in parse_board(files[name].decode("utf-8", "replace")):
                folder, stem = img.rsplit("/", 2)[-2], Path(img).stem
                cc = COUNTRY_DIRS.get(folder) or WONDER_COUNTRY.get(stem)
                if cc and img in files:
                    by_country.setdefault(cc, []).append((title, text, img))
    countries = sorted(by_country, key=lambda c: (stable_hash("lm" + c), c))
    for cc in sorted(ctx.take(countries, "landmark_countries")):
        cname = flags.name(cc) if flags is not None else cc  # type: ignore[attr-defined]
        figs = []
        for title, text, img in sorted(set(by_country[cc])):
            stem = Path(img).stem
            aid = _photo_asset(
                ctx, f"landmark/{stem}", files[img], alt=title, caption=f"{title}, {cname}",
                truth={"type": "photo", "style": "photo", "landmark": stem, "name": title,
                       "country": cc, "country_name": cname, "category": "landmark"},
                credit=credits.get(img.split("resource/", 1)[1], ("", "", "")))
            figs.append(Figure(aid, title, text=text))
        sections = []
        if flags is not None and (fa := flags.asset(cc)):  # type: ignore[attr-defined]
            sections.append((f"The flag of {cname}", [Figure(fa, f"Flag of {cname}")]))
        ctx.pages.append(Page(
            id=f"landmarks/{slug(cname)}", title=f"Famous landmarks of {cname}",
            source="gcompris", kind="landmarks",
            intro=[f"A short travel guide to {len(figs)} monuments of {cname}, from ancient "
                   "ruins to modern memorials.", "Photographs come from Wikimedia Commons."],
            figures=figs, sections=sections))


def _emoji_for(ctx: Context, animal: str) -> list[str]:
    es = getattr(ctx, "emoji_styles", None)
    e = getattr(ctx, "emoji_catalog", {}).get(ANIMAL_EMOJI.get(animal, ""))
    if es is None or e is None:
        return []
    out = []
    for style in ("openmoji-color", "fluent-3d", "noto"):
        if style in es.styles() and (aid := es.asset(e, style)):
            ctx.assets[aid].truth["animal"] = animal
            out.append(aid)
    return out


def _farm(ctx: Context, rcc: _Rcc) -> None:
    files = rcc.files("explore_farm_animals")
    base = ACT + "explore_farm_animals/resource/animals/"
    credits = parse_readme(files.get(base + "README", b"").decode("utf-8", "replace"))
    entries: dict[str, tuple[str, str, str]] = {}
    for name in sorted(files):
        if "/board/board1" in name:
            for title, text, img in parse_board(files[name].decode("utf-8", "replace")):
                entries[Path(img).stem] = (title, text, img)
    for animal in ctx.take(sorted(entries), "farm_animals"):
        title, text, img = entries[animal]
        figs = []
        if img in files:
            figs.append(Figure(_photo_asset(
                ctx, f"animal/photo/{animal}", files[img], alt=f"A {title.lower()} on a farm",
                caption=f"{title} (photograph)", credit=credits.get(f"{animal}.webp", ("", "", "")),
                truth={"type": "photo", "style": "photo", "animal": animal,
                       "category": "farm animal", "name": title}), f"{title} (photograph)",
                text=text))
        svg = files.get(base + f"{animal}.svg")
        if svg and len(svg) < render.MAX_SOURCE_BYTES:
            def produce(s: bytes = svg) -> tuple[bytes, str]:
                return render.svg_to_png(s, 384), "png"
            who, lic, _ = credits.get(f"{animal}.svg", ("Timothée Giet", "CC-BY-SA 4.0", ""))
            aid = ctx.add(Asset(
                id=f"animal/drawing/{animal}", source="gcompris", produce=produce,
                cache_key=f"gcsvg|{render.hashlib.sha256(svg).hexdigest()}",
                alt=f"Cartoon drawing of a {title.lower()}", caption=f"{title} (drawing)",
                truth={"type": "drawing", "style": "drawing", "animal": animal,
                       "category": "farm animal", "name": title}, credit=who, license=lic))
            figs.append(Figure(aid, f"A drawing of a {title.lower()}"))
        for aid in _emoji_for(ctx, animal):
            figs.append(Figure(aid, ctx.assets[aid].caption))
        ctx.pages.append(Page(
            id=f"animals/farm/{slug(animal)}", title=f"The {title.lower()}: a farm animal",
            source="gcompris", kind="animals",
            intro=[text, f"Below: a photograph, a children's-book drawing and emoji of the "
                   f"{title.lower()}."], figures=figs))


def _world(ctx: Context, rcc: _Rcc) -> None:
    files = rcc.files("explore_world_animals")
    base = ACT + "explore_world_animals/resource/animals/"
    credits = parse_readme(files.get(base + "README", b"").decode("utf-8", "replace"))
    boards = sorted(n for n in files if "/board/board" in n)
    for bi, name in enumerate(ctx.take(boards, "world_boards"), start=1):
        figs = []
        for title, text, img in parse_board(files[name].decode("utf-8", "replace")):
            stem = Path(img).stem
            if img not in files:
                continue
            aid = _photo_asset(
                ctx, f"animal/photo/{stem}", files[img], alt=title, caption=title,
                credit=credits.get(f"{stem}.webp", ("", "", "")), fmt="webp",
                truth={"type": "photo", "style": "photo", "animal": stem,
                       "category": "wild animal", "name": title})
            figs.append(Figure(aid, title, text=text))
            figs.extend(Figure(e, ctx.assets[e].caption) for e in _emoji_for(ctx, stem)[:1])
        ctx.pages.append(Page(
            id=f"animals/world-{bi}", title=f"Animals of the world, part {bi}",
            source="gcompris", kind="animals",
            intro=["Wild animals from every continent, with a fun fact about each one."],
            figures=figs))


def _categories(ctx: Context, rcc: _Rcc) -> None:
    files = rcc.files("categorization")
    base = ACT + "categorization/resource/images/"
    for cat in ctx.take(CATEGORIES, "categories"):
        credits = parse_readme(files.get(f"{base}{cat}/README", b"").decode("utf-8", "replace"))
        imgs = sorted(n for n in files if n.startswith(f"{base}{cat}/") and n.endswith(".webp"))
        figs = []
        for img in imgs[: ctx.cap("gallery_max") or None]:
            stem = Path(img).stem
            words = re.sub(r"(?<=[a-z])(?=[A-Z0-9])", " ", stem).lower()
            aid = _photo_asset(
                ctx, f"photo/{cat}/{stem}", files[img], alt=words, caption=words.capitalize(),
                credit=credits.get(Path(img).name, ("", "", "")),
                truth={"type": "photo", "style": "photo", "category": cat, "name": words})
            figs.append(Figure(aid, words.capitalize()))
        if figs:
            ctx.pages.append(Page(
                id=f"photos/{cat}", title=f"Photo gallery: {cat}", source="gcompris",
                kind="gallery", intro=[f"A small gallery of {len(figs)} photographs in the "
                                       f"“{cat}” category, used in a sorting game for children."],
                figures=figs))
