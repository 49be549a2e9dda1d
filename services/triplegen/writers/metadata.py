"""The offline writer: instructions from what two images' mined text shares and how it differs.

How: facets parsed from each image's alt/caption/context/page title (meta.py) are compared;
every applicable relation (style change, skin tone, gender, colour, number, same place,
older/newer, neighbouring country, capital, same collection, same page) offers several
phrasings in three grammatical shapes (noun phrase, imperative, "the same X but ..."), which
are combined with varied openers and joined when several facets change at once. A seeded RNG
per (pair, version, slot) makes the output deterministic (idempotent reruns) yet varied.
Every candidate passes validate.check (no target title or file name, English, length).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from services.triplegen.meta import NUMBER_WORDS, TONES, ImageMeta
from services.triplegen.validate import check
from services.triplegen.writers.base import Instruction, PairContext, WriteResult

VERSION = "metadata-v5"  # v5: everyday skin-tone words (Fitzpatrick descriptors) beside Unicode's

NP_OPENERS = ("", "", "find ", "show me ", "I'm looking for ", "search for ", "looking for ",
              "can you find ", "get me ", "I want ", "find me ")
STYLE_NP = {
    "line": ("a black-and-white line drawing of it", "an outline drawing of it with no colour",
             "the line-art version", "a sketch of it in black lines only",
             "a monochrome outline version"),
    "3d": ("a 3D version of it", "the same thing as a soft 3D model", "a 3D-rendered version",
           "a three-dimensional render of it", "a glossy 3D model of this"),
    "photo": ("a real photo of it", "a photograph of the real thing", "the photographic version",
              "what it looks like in real life"),
    "glossy": ("the glossy, rounded version", "a shiny rounded emoji version of it",
               "the glossy font version"),
    "flat": ("a flat colour version", "the same in flat colours with outlines",
             "a flat, outlined colour drawing of it"),
    "cartoon": ("a cartoon drawing of it", "an illustrated version", "a hand-drawn version",
                "a clip-art style drawing of this"),
}
STYLE_MOD = {
    "line": ("as a line drawing", "in black-and-white line art", "as an outline without fill",
             "drawn in black lines only"),
    "3d": ("in 3D", "as a 3D model", "rendered in 3D", "in a three-dimensional style"),
    "photo": ("as a real photo", "photographed", "in a realistic photo"),
    "glossy": ("in a glossy rounded style", "in the glossy emoji style"),
    "flat": ("in flat colours", "in a flat outlined style"),
    "cartoon": ("as a cartoon", "as a drawing", "in a cartoon style"),
}
STYLE_IMP = {
    "line": ("turn it into a line drawing", "remove the colours and keep only the outlines",
             "make it black-and-white line art"),
    "3d": ("make it 3D", "render it as a 3D model", "turn this into a 3D object"),
    "photo": ("make it photorealistic", "turn it into a real photo"),
    "glossy": ("make it glossy and rounded",),
    "flat": ("make it a flat colour drawing", "flatten it into simple colours"),
    "cartoon": ("make it a cartoon", "turn it into a drawing"),
}
SAME_STYLE = {
    "line": ("another black-and-white line drawing", "something else drawn only in outlines"),
    "3d": ("something else in 3D", "another 3D-rendered object", "a different 3D model"),
    "photo": ("another real photo", "a different photograph from here"),
    "glossy": ("another glossy rounded emoji", "something else in this glossy style"),
    "flat": ("something else in flat colours", "another flat outlined drawing"),
    "cartoon": ("another cartoon drawing", "a different illustration in this style"),
}
GENDER_WORD = {"woman": ("a woman", "female", "a female version"),
               "man": ("a man", "male", "a male version"),
               "girl": ("a girl", "a girl", "a young girl"),
               "boy": ("a boy", "a boy", "a young boy"),
               "person": ("a gender-neutral person", "gender-neutral", "a neutral person")}


@dataclass
class Option:
    relation: str
    texts: list[str]
    weight: float  # higher = more specific, tried first


def _seed(*parts: object) -> random.Random:
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def _singular(word: str) -> str:
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _kind_noun(q: ImageMeta, t: ImageMeta) -> str:
    """What both images are, in one word: 'landmark', 'flag', 'emoji', 'fish', 'picture'."""
    text = f"{q.page_title} {q.caption} {q.context}".lower()
    for cue in ("landmark", "monument", "flag", "emoji", "stamp", "clip art", "photo"):
        if cue in text:
            return {"clip art": "picture"}.get(cue, cue)
    return "picture"


def _noun_for(q: ImageMeta) -> list[str]:
    """How to refer to the shared subject: its name for objects, a person word for people."""
    emoji = "emoji" in f"{q.page_title} {q.caption} {q.context}".lower()
    if q.gender or q.tone:
        return ["person", "character", "figure"] + (["emoji"] if emoji else [])
    base = ["one", "thing"] + (["emoji"] if emoji else [])
    if q.subject and len(q.subject) <= 30:
        base += [q.subject] * 3
    return base


def _np(rng: random.Random, core: str) -> str:
    return rng.choice(NP_OPENERS) + core


# How people name skin tones besides Unicode's five names: the Fitzpatrick scale's own
# descriptors (the emoji modifiers are Fitzpatrick types 1-2, 3, 4, 5 and 6), so a request
# for "olive" or "pale" skin means something to the model, not only "medium" or "light".
TONE_SYNONYMS = {
    "light": ("pale", "fair", "pale white", "very light"),
    "medium-light": ("light olive", "fair to olive", "lightly tanned"),
    "medium": ("olive", "moderate brown", "tanned"),
    "medium-dark": ("brown", "dark brown"),
    "dark": ("very dark brown", "deeply pigmented"),
}


def _tone_mods(q: ImageMeta, t: ImageMeta) -> tuple[list[str], list[str]]:
    """(modifiers, imperatives) for a skin-tone change: Unicode's name for the tone, one
    everyday descriptor of it, and the direction of the change when both tones are known."""
    tt = t.tone or ""
    if tt == "default":
        return (["in the default yellow", "with yellow cartoon skin", "without a skin tone"],
                ["make the skin the default yellow", "remove the skin tone"])
    rank = {k: i for i, k in enumerate(TONES)}
    qi = rank.get(q.tone or "", -1)
    ti = rank.get(tt, -1)
    mods = [f"with {tt} skin", f"with a {tt} skin tone", f"in a {tt} skin tone"]
    imps = [f"give it a {tt} skin tone", f"change the skin to {tt}"]
    word = _seed(q.image_id, t.image_id, "tone-word").choice(TONE_SYNONYMS.get(tt) or (tt,))
    mods += [f"with {word} skin", f"{word}-skinned"]
    imps += [f"make the skin {word}"]
    if qi >= 0 and ti >= 0:
        d = "darker" if ti > qi else "lighter"
        much = "much " if abs(ti - qi) >= 3 else ""
        mods += [f"with {much}{d} skin", f"with a {much}{d} skin tone", f"{much}{d}-skinned"]
        imps += [f"make the skin {much}{d}", f"make it {much}{d}-skinned"]
    elif qi < 0 and ti >= 0:  # default yellow -> a real tone
        mods += ["with a realistic skin tone", f"with {tt} human skin"]
    return mods, imps


def _gender_mods(t: ImageMeta) -> tuple[list[str], list[str]]:
    g = GENDER_WORD.get(t.gender or "")
    if not g:
        return [], []
    return ([f"as {g[0]}", g[1], f"shown as {g[0]}"],
            [f"make it {g[0]}", f"swap to {g[2]}", f"change the person to {g[0]}"])


def _same_subject(q: ImageMeta, t: ImageMeta) -> bool:
    a, b = set(q.subject.split()), set(t.subject.split())
    return bool(a and b) and len(a & b) / len(a | b) >= 0.75


def relations(ctx: PairContext, rng: random.Random) -> list[Option]:
    """Every relation the metadata supports for this pair, most specific first."""
    q, t = ctx.query, ctx.target
    out: list[Option] = []
    same = _same_subject(q, t)
    noun = _kind_noun(q, t)

    # -- same subject, some facets changed: compose modifiers ("the same X but ... and ...")
    if same:
        mods: list[tuple[str, list[str], list[str]]] = []
        if q.tone != t.tone and t.tone:
            m, i = _tone_mods(q, t)
            mods.append(("skin_tone", m, i))
        if q.gender != t.gender and t.gender:
            m, i = _gender_mods(t)
            if m:
                mods.append(("gender", m, i))
        if q.style != t.style and t.style:
            mods.append(("style_change", list(STYLE_MOD[t.style]), list(STYLE_IMP[t.style])))
        new_colours = [c for c in t.colours if c not in q.colours]
        if new_colours:
            c = new_colours[0]
            mods.append(("colour_change", [f"in {c}", f"coloured {c}", f"in {c} instead"],
                         [f"make it {c}", f"change the colour to {c}"]))
        if t.number is not None and q.number is not None and t.number != q.number:
            d = t.number - q.number
            n = t.number
            nw = NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)
            m = [f"with the number {n}", f"showing {nw}"]
            i = [f"change the number to {n}"]
            if d == 1:
                m += ["with the next number"]
                i += ["go one number up", "add one"]
            elif d == -1:
                m += ["with the previous number"]
                i += ["go one number down", "subtract one"]
            mods.append(("number_change", m, i))
        if mods:
            rel = "+".join(r for r, _, _ in mods) if len(mods) > 1 else mods[0][0]
            texts = []
            for _ in range(6):
                shape = rng.random()
                nounw = rng.choice(_noun_for(q))
                picks = [rng.choice(m) for _, m, _ in mods]
                joined = picks[0] if len(picks) == 1 else ", ".join(picks[:-1]) + " and " + \
                    picks[-1]
                if shape < 0.4:
                    texts.append(_np(rng, f"the same {nounw} {joined}"))
                elif shape < 0.7 and all(i for _, _, i in mods):
                    imps = [rng.choice(i) for _, _, i in mods]
                    texts.append(" and ".join(imps))
                elif len(mods) == 1 and mods[0][0] == "style_change":
                    texts.append(_np(rng, rng.choice(STYLE_NP[t.style])))
                else:
                    texts.append(_np(rng, f"this {nounw} but {joined}") if rng.random() < 0.5
                                 else f"{rng.choice(['same', 'the same'])} {nounw}, {joined}")
            out.append(Option(rel, texts, 10.0 + len(mods)))
        if t.brand and q.brand and t.brand != q.brand:
            out.append(Option("style_change", [
                _np(rng, f"how {t.brand} draws the same {rng.choice(_noun_for(q))}"),
                _np(rng, f"the {t.brand} design of this"),
                f"same emoji, but the {t.brand} version"], 6.0))

    # -- knowledge: neighbouring country, capital
    if q.flag_of and t.flag_of and t.flag_of in q.borders:
        out.append(Option("neighbour", [
            _np(rng, f"the flag of a country bordering {q.flag_of}"),
            _np(rng, "the flag of a neighbouring country"),
            _np(rng, f"a flag from one of {q.flag_of}'s neighbours"),
            f"which neighbour of {q.flag_of} uses this flag? find it",
        ][: 3], 9.0))
    if t.capital and t.flag_of and not same:
        out.append(Option("capital", [
            _np(rng, f"the flag of the country whose capital is {t.capital}"),
            _np(rng, f"the flag of the country governed from {t.capital}"),
            _np(rng, f"a flag of the nation with {t.capital} as its capital"),
        ], 8.0))

    # -- same place (country/region), with an older/newer refinement when years are known
    if q.place_key and q.place_key == t.place_key and not same:
        p = q.place
        texts = [_np(rng, f"another {noun} in {p}"), _np(rng, f"a different {noun} from {p}"),
                 _np(rng, f"other {noun}s of {p}"),
                 # people point at the place rather than name it ("from the same region")
                 _np(rng, rng.choice((f"more {noun}s from the same place",
                                      f"another {noun} from the same region"))),
                 _np(rng, f"another famous {noun} in this country")
                 if noun in ("landmark", "monument") else _np(rng, f"one more {noun} of {p}")]
        out.append(Option("same_place", texts, 7.0))
        if q.year is not None and t.year is not None and abs(q.year - t.year) >= 20:
            older = t.year < q.year
            w = "older" if older else "more recent"
            out.append(Option("older_newer", [
                _np(rng, f"an {w} {noun} in {p}" if older else f"a {w} {noun} in {p}"),
                _np(rng, f"a {noun} in {p} built {'before' if older else 'after'} this one"),
                _np(rng, f"something {'older' if older else 'newer'} from {p}"),
            ], 8.5))

    # -- same collection, different item: describe the target without naming it exactly
    if not same:
        descs = []
        if t.description():
            descs.append(t.description())
        if t.top_label and (not q.top_label or q.top_label != t.top_label):
            art = "an" if t.top_label[0].lower() in "aeiou" else "a"
            descs.append(f"something like {art} {t.top_label}")
        tc = [c for c in t.colours if c not in q.colours]
        style_keep = rng.choice(STYLE_MOD.get(q.style or "", ("",))) if q.style == t.style \
            else ""
        for d in descs[:2]:
            texts = [_np(rng, f"{d} from the same collection"),
                     _np(rng, f"another {noun} here, this time {d}"),
                     _np(rng, f"{d} instead"),
                     _np(rng, f"{d} {style_keep}".strip()) if style_keep else
                     _np(rng, f"a different {noun}: {d}")]
            # and, as people often ask, without describing it at all: "more like this"
            texts.append(_np(rng, rng.choice((f"another {noun} of the same kind",
                                              "something else from the same collection",
                                              f"a similar {noun} from this set"))))
            out.append(Option("category", texts, 5.0))
        if tc:
            out.append(Option("colour", [_np(rng, f"a {tc[0]} {noun} from the same set"),
                                         _np(rng, f"another {noun} here, but a {tc[0]} one"),
                                         _np(rng, f"something {tc[0]} from this collection")],
                              4.5))
        if style_keep and q.style:
            out.append(Option("same_style", [_np(rng, p) for p in SAME_STYLE[q.style]] + [
                _np(rng, f"another {noun} drawn the same way"),
                _np(rng, f"a different {noun} {style_keep}")], 3.0))
        topic = q.topic or t.topic
        if topic and len(topic) <= 40:
            out.append(Option("same_page", [
                _np(rng, f"another {noun} from this page about {topic}"),
                _np(rng, f"something else from the same {topic} collection"),
                _np(rng, f"a different {noun} in the {topic} group"),
            ], 2.0))
    out.append(Option("same_page", [
        _np(rng, f"another {noun} that appears next to this one"),
        _np(rng, f"a related {noun} from the same web page"),
    ], 1.0))
    return out


def _tidy(text: str) -> str:
    text = " ".join(text.split()).strip(" ,")
    return text[0].upper() + text[1:] if text and text[0].islower() and text[0] != "i" else text


class MetadataWriter:
    name = "metadata"
    version = VERSION
    model: str | None = None
    prompt_version: str | None = None

    def __init__(self, per_pair: int = 2) -> None:
        self.per_pair = per_pair

    def write_one(self, ctx: PairContext) -> WriteResult:
        rng = _seed(ctx.pair_id, self.version)
        options = sorted(relations(ctx, rng), key=lambda o: -o.weight)
        chosen: list[Instruction] = []
        seen: set[str] = set()
        rejected: list[str] = []
        for opt in options:  # one instruction per relation first, most specific first
            if chosen and opt.relation == "same_page":
                break  # a specific instruction exists: don't pad with the generic fallback
            texts = list(opt.texts)
            rng.shuffle(texts)
            for text in texts:
                text = _tidy(text)
                why = check(text, ctx.target)
                if why:
                    rejected.append(why)
                    continue
                if text.lower() in seen:
                    continue
                seen.add(text.lower())
                score = {"specificity": opt.weight}
                if ctx.similarity is not None:
                    score["similarity"] = round(float(ctx.similarity), 4)
                chosen.append(Instruction(text, opt.relation, score))
                break
            if len(chosen) >= self.per_pair:
                break
        if not chosen:
            return WriteResult(ctx.pair_id, error="no valid instruction: " +
                               (", ".join(sorted(set(rejected))) or "no relation found"))
        return WriteResult(ctx.pair_id, chosen)

    def write(self, pairs: Sequence[PairContext]) -> list[WriteResult]:
        return [self.write_one(p) for p in pairs]
