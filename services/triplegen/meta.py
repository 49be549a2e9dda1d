"""What a writer knows about one image: the mined text plus annotations, and facets parsed
from that text (subject, skin tone, gender, art style, colours, number, place, year, topic).

Why parse text rather than use any ground truth: on real web pages all we have is alt text,
captions, the surrounding paragraph and the page title; the facets below are generic web
vocabulary (skin tones, genders, art styles, colours, "X of <country>", "built in <year>").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import PurePosixPath
from urllib.parse import urlparse

TONES = ("light", "medium-light", "medium", "medium-dark", "dark")
_TONE_RE = re.compile(r"\b(medium-light|medium-dark|light|medium|dark)(?: skin)?(?: tone)\b", re.I)
_DEFAULT_TONE_RE = re.compile(r"\bdefault (?:yellow )?skin\b|\bdefault yellow\b", re.I)
GENDERS = {"woman": "woman", "women": "woman", "female": "woman", "girl": "girl",
           "man": "man", "men": "man", "male": "man", "boy": "boy", "person": "person",
           "people": "person"}
# Art styles named the way web pages name them; first match wins (most specific first).
STYLES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("line", re.compile(r"\bline[- ]?art\b|\bline drawings?\b|\boutlined?\b|black[- ]and[- ]white"
                        r"|\bmonochrome\b|\bwithout any fill\b|\bbw\b", re.I)),
    ("3d", re.compile(r"\b3d\b|three-dimensional|\brendered\b", re.I)),
    ("photo", re.compile(r"\bphoto(?:graph)?s?\b|\bphotographic\b", re.I)),
    ("glossy", re.compile(r"\bglossy\b|\bnoto\b", re.I)),
    ("flat", re.compile(r"\bflat\b|\bopenmoji colou?r\b", re.I)),
    ("cartoon", re.compile(r"\bcartoon\b|\bdrawing\b|\bdrawn\b|\billustration\b|\bclip ?art\b"
                           r"|\bsketch\b|\bstamps?\b", re.I)),
)
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "brown",
           "black", "white", "grey", "gray", "gold", "golden", "silver")
_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.I)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten")
_NUM_RE = re.compile(r"(?<![\w.])(\d{1,3})(?![\w.])")
_YEAR_RE = re.compile(r"\b(?:built|constructed|completed|founded|erected|opened|dates? from|"
                      r"finished|created)\b[^.]{0,40}?\b(1\d{3}|20\d{2}|\d{1,2}(?:st|nd|rd|th) "
                      r"century(?: BCE| BC)?)", re.I)
_PLACE_RES = (
    re.compile(r"\b(?i:landmarks?|monuments?|sights?|attractions?|flags?|places|cities|photos?)"
               r" (?:of|in|from) (?:the )?([A-Z][\w'’.-]*(?: [A-Z][\w'’.-]*){0,3})"),
)
_CAPITAL_RE = re.compile(r"\bcapital(?: city)?(?: is|:)\s*([A-Z][^.;,()]{1,40})")
_BORDERS_RE = re.compile(r"\bborders?\s+([A-Z][^.]{1,400})")
_FLAG_OF_RE = re.compile(r"^\s*(?:the )?flag(?: of|:)\s*(?:the )?(.+?)\s*$", re.I)
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
            return m.group(1).lower()
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
        found = [c.lower() for c in _COLOUR_RE.findall(f"{self.alt} {self.caption}")]
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
    def place(self) -> str | None:
        """A country/region the image is 'of', from its caption or the page title."""
        cap = clean(self.caption, 200)
        if "," in cap:
            tail = cap.rsplit(",", 1)[1].strip()
            if re.fullmatch(r"[A-Z][\w'’.-]*(?: [A-Z][\w'’.-]*){0,3}", tail):
                return tail
        for rx in _PLACE_RES:
            m = rx.search(self.page_title)
            if m:
                return m.group(1).strip()
        return None

    @cached_property
    def flag_of(self) -> str | None:
        m = _FLAG_OF_RE.match(clean(self.alt, 100) or clean(self.caption, 100))
        return m.group(1).strip() if m else None

    def _own_facts(self) -> str:
        """The part of the surrounding text about this image's own country: pages put many
        figures next to each other, so a capital in the context may belong to a neighbour."""
        if not self.flag_of:
            return ""
        m = re.search(re.escape(self.flag_of) + r"\b[^.]*\.(?:\s*It borders[^.]*\.)?",
                      self.context)
        return m.group(0) if m else ""

    @cached_property
    def capital(self) -> str | None:
        m = _CAPITAL_RE.search(self._own_facts())
        return m.group(1).strip() if m else None

    @cached_property
    def borders(self) -> list[str]:
        m = _BORDERS_RE.search(self._own_facts())
        if not m:
            return []
        return [b.strip() for b in re.split(r",| and ", m.group(1)) if b.strip()]

    @cached_property
    def subject(self) -> str:
        """The name without presentation words, tones, genders and numbers: 'health worker'."""
        name = _TONE_RE.sub(" ", self.name.split(":")[0] if self.tone else self.name)
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
