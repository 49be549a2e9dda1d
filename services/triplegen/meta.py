"""What a writer knows about one image: the mined text plus annotations, and facets parsed
from that text (subject, skin tone, gender, art style, colours, number, place, year, topic).

Why parse text rather than use any ground truth: on real web pages all we have is alt text,
captions, the surrounding paragraph and the page title; the facets below are generic web
vocabulary (skin tones, genders, art styles, colours, "built in <year>") and named entities:
countries and world regions however a page writes them (places.py), whose capitals and
borders the writer knows, as an LLM writer would. No facet depends on one site's sentence
templates ("capital: X. It borders Y."): a page saying the same in other words gives the
same facets (tests/triplegen/test_triplegen_wording.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import PurePosixPath
from urllib.parse import urlparse

from services.triplegen.places import gazetteer

TONES = ("light", "medium-light", "medium", "medium-dark", "dark")
_TONE_WORD = r"(medium[- ]light|medium[- ]dark|light|medium|dark)"
# "dark skin tone", "dark skin", "dark-skinned", "dark tone", "skin tone: dark", and the
# Fitzpatrick types the Unicode modifiers are named after ("type-6").
_TONE_RE = re.compile(rf"\b{_TONE_WORD}(?:[- ]skinned\b|(?: skin)(?: tones?| colou?r)?\b|"
                      rf" tones?\b)|\bskin(?: tone| colou?r)?\s*[:=-]\s*{_TONE_WORD}\b", re.I)
_FITZPATRICK_RE = re.compile(r"\b(?:(?:fitzpatrick|skin)\s+type[- ]?|type-)(1-2|[1-6])\b", re.I)
_FITZPATRICK = {"1-2": "light", "1": "light", "2": "light", "3": "medium-light", "4": "medium",
                "5": "medium-dark", "6": "dark"}
_DEFAULT_TONE_RE = re.compile(r"\bdefault (?:yellow )?skin\b|\bdefault yellow\b", re.I)
GENDERS = {"woman": "woman", "women": "woman", "female": "woman", "lady": "woman",
           "ladies": "woman", "girl": "girl", "girls": "girl", "man": "man", "men": "man",
           "male": "man", "gentleman": "man", "boy": "boy", "boys": "boy", "person": "person",
           "people": "person", "gender-neutral": "person", "adult": "person"}
# Art styles named the way web pages name them; first match wins (most specific first).
STYLES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("line", re.compile(r"\bline[- ]?art\b|\bline drawings?\b|\boutlined?\b|black[- ]and[- ]white"
                        r"|\bmonochrome\b|\bwithout (?:any )?fill\b|\bbw\b|\bpen[- ]and[- ]ink\b"
                        r"|\bink drawings?\b|\bcontour drawings?\b|\bunfilled\b", re.I)),
    ("3d", re.compile(r"\b3d\b|\b3-d\b|three-dimensional|\brendered\b|\b(?:cgi|clay) models?\b",
                      re.I)),
    ("photo", re.compile(r"\bphoto(?:graph)?s?\b|\bphotographic\b|\bsnapshots?\b"
                         r"|\bphotorealistic\b|\breal[- ]life\b", re.I)),
    ("glossy", re.compile(r"\bglossy\b|\bnoto\b", re.I)),
    ("flat", re.compile(r"\bflat\b|\bopenmoji colou?r\b", re.I)),
    ("cartoon", re.compile(r"\bcartoons?\b|\bdrawing\b|\bdrawn\b|\billustration\b|\bclip ?art\b"
                           r"|\bsketch\b|\bstamps?\b|\bdoodles?\b|\bcomic\b", re.I)),
)
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "brown",
           "black", "white", "grey", "gray", "gold", "golden", "silver")
_BW_RE = re.compile(r"\bblack[- ](?:and|&)[- ]white\b", re.I)
_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.I)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten")
_NUM_RE = re.compile(r"(?<![\w.])(\d{1,3})(?![\w.])")
_YEAR_RE = re.compile(r"\b(?:built|constructed|completed|founded|erected|opened|dates? from|"
                      r"dating (?:back )?(?:from|to)|dated|finished|created|raised|inaugurated|"
                      r"consecrated|established)\b[^.]{0,40}?\b(1\d{3}|20\d{2}|"
                      r"\d{1,2}(?:st|nd|rd|th) century(?: BCE| BC)?)", re.I)
# A page title is about a place when it names one after a preposition or a possessive, or
# names one and says it is about places ("Brazil: top sights", "Sights you must see in India").
_PLACE_CUE = re.compile(r"\b(?:landmarks?|monuments?|sights?|attractions?|flags?|banners?|places"
                        r"|cities|towns|travel|tour|visit|trip|guide|heritage|wonders?|country"
                        r"|countries|nations?|regions?|photos?)\b", re.I)
_PLACE_PREP = re.compile(r"\b(?:of|in|from|across|around|to|visiting)\s+(?:the\s+)?$", re.I)
_CAPTION_TAIL = re.compile(r"[A-Z][\w'’.-]*(?: [A-Z][\w'’.-]*){0,3}")
_FLAG_WORD = re.compile(r"\b(?:flags?|banners?|ensigns?)\b", re.I)
FLAG_NEAR_CHARS = 40  # a country named this close to "flag" is what the flag is of
# Words that describe how a picture is made or presented, not what it shows.
PRESENTATION = frozenset({
    "a", "an", "the", "of", "in", "on", "at", "by", "with", "and", "or", "for", "to", "from",
    "as", "this", "that", "its", "it", "cartoon", "drawing", "drawn", "photo", "photograph",
    "picture", "image", "illustration", "emoji", "icon", "clip", "art", "clipart", "sketch",
    "stamp", "line", "outline", "outlined", "black", "white", "bw", "3d", "rendered", "render",
    "glossy", "flat", "colour", "color", "version", "style", "design", "default", "yellow",
    "skin", "tone", "light", "medium", "dark", "medium-light", "medium-dark",
})
GENERIC_ALT = frozenset({
    "image", "picture", "photo", "img", "icon", "logo", "banner", "untitled", "thumb",
    "thumbnail", "spacer", "placeholder",
})
_WORD_RE = re.compile(r"[a-z0-9][a-z0-9'’-]*")


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def clean(text: str | None, limit: int = 600) -> str:
    return re.sub(r"\s+", " ", text or "").strip()[:limit]


@dataclass
class ImageMeta:
    image_id: int
    alt: str = ""
    caption: str = ""
    context: str = ""
    page_title: str = ""
    labels: list[dict] = field(default_factory=list)
    blob_uri: str = ""
    source_url: str = ""
    width: int = 0
    height: int = 0

    # ------------------------------------------------------------------ usable text
    @cached_property
    def name(self) -> str:
        """The image's own title: alt text unless generic, else the caption's first clause."""
        alt = clean(self.alt, 200)
        if alt and alt.lower() not in GENERIC_ALT and len(alt) >= 2:
            return alt
        cap = clean(self.caption, 200)
        return re.split(r"\s+[—–-]\s+|[.;]", cap)[0].strip() if cap else ""

    def has_text(self) -> bool:
        return len(re.sub(r"[^A-Za-z]", "", self.name)) >= 3

    def titles(self) -> set[str]:
        """Strings that identify this image exactly (a target's must not leak)."""
        out = {clean(t, 300).lower().strip(" .") for t in (self.alt, self.caption, self.name)}
        stem = self.file_stem
        if stem:
            out.add(stem.lower())
        return {t for t in out if len(t) >= 3}

    @cached_property
    def file_stem(self) -> str:
        for url in (self.source_url, self.blob_uri):
            if url:
                stem = PurePosixPath(urlparse(url).path).stem
                if stem:
                    return stem
        return ""

    # ------------------------------------------------------------------ facets
    @cached_property
    def tone(self) -> str | None:
        text = f"{self.alt} {self.caption}"
        m = _TONE_RE.search(text)
        if m:
            return (m.group(1) or m.group(2)).lower().replace(" ", "-")
        m = _FITZPATRICK_RE.search(text)
        if m:
            return _FITZPATRICK[m.group(1)]
        return "default" if _DEFAULT_TONE_RE.search(text) else None

    @cached_property
    def gender(self) -> str | None:
        for w in words(self.name):
            if w in GENDERS:
                return GENDERS[w]
        return None

    @cached_property
    def style(self) -> str | None:
        """Own caption/alt first, then the surrounding text, then the page title."""
        for text in (f"{self.alt} {self.caption}", self.context, self.page_title):
            for style, rx in STYLES:
                if rx.search(text or ""):
                    return style
        return None

    @cached_property
    def brand(self) -> str | None:
        m = re.search(r"\b(?:in|\()\s*((?:Fluent|Noto|OpenMoji|Twemoji|Apple|Google|Samsung|"
                      r"Microsoft)[\w ]{0,20}?)(?:\)|$| —| -)", f"{self.caption}")
        return m.group(1).strip() if m else None

    @cached_property
    def colours(self) -> list[str]:
        text = _BW_RE.sub(" ", f"{self.alt} {self.caption}")  # a style, not two colours
        found = [c.lower() for c in _COLOUR_RE.findall(text)]
        if self.tone:  # "dark skin tone" is not a colour of the object
            found = [c for c in found if c not in ("yellow",) or "yellow skin" not in
                     f"{self.alt} {self.caption}".lower()]
        return list(dict.fromkeys(c.replace("gray", "grey").replace("golden", "gold")
                                  for c in found))

    @cached_property
    def number(self) -> int | None:
        """A number the image shows ('keycap: 7', 'digit five', 'three apples'), not an id
        like 'fish 11'."""
        name = self.alt or self.name
        m = re.search(r":\s*(\d{1,3})\s*$", name) or (
            re.search(r"\b(?:number|digit|numeral|count)\s+(\d{1,3})\b", name, re.I))
        if m:
            return int(m.group(1))
        first = words(name)[:1]
        if first and first[0] in NUMBER_WORDS[2:]:  # "three apples"
            return NUMBER_WORDS.index(first[0])
        return None

    @cached_property
    def year(self) -> int | None:
        m = _YEAR_RE.search(self.context)
        if not m:
            return None
        val = m.group(1)
        if "century" in val.lower():
            n = int(re.match(r"\d+", val).group(0))
            y = (n - 1) * 100 + 50
            return -y if re.search(r"BCE?|BC", val) else y
        return int(val)

    @cached_property
    def _place(self) -> tuple[str, str] | None:
        """(as written, canonical key) of the country/region the image is of or in: one its
        own caption or alt names after a comma or a preposition ('Charminar, Hyderabad,
        India', 'a mosque in Jordan'), else the one its page title is about. A flag is *of*
        its country, not in it: its place is the page's."""
        gaz = gazetteer()
        if not self.flag_of:
            for text in (clean(self.caption, 200), clean(self.alt, 200)):
                for surface, key, start in gaz.places_in(text):
                    before = text[:start].rstrip()
                    if before.endswith(",") or _PLACE_PREP.search(text[:start]) or \
                            before.endswith("("):
                        return surface, key
            cap = clean(self.caption, 200)
            if "," in cap:  # "Eiffel Tower, Paris": a place the gazetteer does not list
                tail = cap.rsplit(",", 1)[1].strip()
                if _CAPTION_TAIL.fullmatch(tail):
                    return tail, tail.lower()
        title = clean(self.page_title, 200)
        places = gaz.places_in(title)
        for surface, key, start in places:
            if _PLACE_PREP.search(title[:start]) or title[start + len(surface):].startswith(
                    ("'s", "’s", ":")):
                return surface, key
        if places and _PLACE_CUE.search(title):
            return places[0][0], places[0][1]
        return None

    @cached_property
    def place(self) -> str | None:
        """A country/region the image is 'of' or in, as the page writes it."""
        return self._place[0] if self._place else None

    @cached_property
    def place_key(self) -> str | None:
        """The same place under one name whatever the spelling ('USA', 'United States')."""
        return self._place[1] if self._place else None

    @cached_property
    def flag_of(self) -> str | None:
        """The country a flag shows, named (or as a demonym) next to a flag word in its own
        alt text or caption: 'Flag of X', 'X flag', 'flag: X', 'the Belarusian banner'."""
        gaz = gazetteer()
        for text in (clean(self.alt, 200), clean(self.caption, 200)):
            flags = [m.span() for m in _FLAG_WORD.finditer(text)]
            if not flags:
                continue
            found = gaz.countries_in(text) or gaz.demonyms_in(text)
            near = [(min(abs(s - fe), abs(fs - e)), name) for name, s, e in found
                    for fs, fe in flags if min(abs(s - fe), abs(fs - e)) <= FLAG_NEAR_CHARS]
            if near:
                return min(near)[1]
        return None

    @cached_property
    def capital(self) -> str | None:
        """A flag's country's capital: known, not read from whichever paragraph is nearby
        (pages put many figures side by side; a capital in the context may be a neighbour's)."""
        c = gazetteer().country(self.flag_of)
        return c.capitals[0] if c and c.capitals else None

    @cached_property
    def borders(self) -> list[str]:
        c = gazetteer().country(self.flag_of)
        return list(c.borders) if c else []

    @cached_property
    def subject(self) -> str:
        """The name without presentation words, tones, genders and numbers: 'health worker'."""
        name = _TONE_RE.sub(" ", self.name.split(":")[0] if self.tone else self.name)
        name = _FITZPATRICK_RE.sub(" ", name)
        kept = [w for w in words(name) if w not in PRESENTATION and w not in GENDERS
                and not w.isdigit() and w not in NUMBER_WORDS]
        return " ".join(kept)

    @cached_property
    def top_label(self) -> str | None:
        """Zero-shot label for photos when the classifier is fairly sure (ImageNet names; on
        emoji and clip art its labels are unreliable)."""
        if self.style == "photo" and self.labels and float(self.labels[0].get("score", 0)) >= 0.4:
            return str(self.labels[0]["label"])
        return None

    @cached_property
    def topic(self) -> str | None:
        """What the page is a collection of, from its title: 'clothing', 'fishes', 'keycap'."""
        t = clean(self.page_title, 200)
        if not t:
            return None
        t = re.split(r"\s+[—–|-]\s+", t)[0]
        if "›" in t:
            t = t.split("›")[-1]
        t = re.sub(r"^(?:photo gallery|gallery|famous|the)\s*:?\s*", "", t.strip(), flags=re.I)
        t = re.sub(r"\s+(?:in|across)\s+.*$", "", t)
        t = re.sub(r":.*$", "", t)
        if self.place:
            t = re.sub(r"\s+(?:of|in|from)\s+(?:the\s+)?" + re.escape(self.place) + r"\b.*$",
                       "", t, flags=re.I)
        return t.strip().lower() or None

    def description(self) -> str | None:
        """A short describing phrase from the surrounding text ('A red and white anemone
        flower.'), if the text is one: 3-12 words, starting with an article, plain prose."""
        first = re.split(r"(?<=[a-z][.!?])\s", clean(self.context, 400))[0].strip().rstrip(".")
        n = len(first.split())
        if (3 <= n <= 12 and re.match(r"(?:an?|the) [a-z]", first, re.I)
                and not re.search(r"[;:()\d]", first) and first.lower() not in self.titles()
                and not re.search(r"\b(?:is|are|was|were|means|must|can|will|has|have|should|"
                                  r"do|does)\b", first, re.I)):
            return first[0].lower() + first[1:]
        return None
