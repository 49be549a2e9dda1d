"""Held-out evaluation queries: (query image, instruction, target image set).

Queries are derived from ground truth only, for relations in general rather than one
template: each relation has several phrasings and one is picked per query by a stable
hash (all are kept in ``paraphrases``), so a model tuned to one wording gains nothing.
Query images and targets are all images of held-out pages. Each query also carries
``unseen_instruction``, the same request worded by hand in ways no writer produces
(tools.corpus.unseen).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tools.corpus.model import stable_hash
from tools.corpus.unseen import unseen_instruction

STYLE_PHRASES = {
    "openmoji-line": ["as a line drawing", "the same thing as black-and-white line art",
                      "an outline version with no colours", "just the black outlines, no fill"],
    "fluent-3d": ["a 3D version", "render it as a glossy 3D object",
                  "the same emoji but three-dimensional and shaded"],
    "noto": ["in the Noto emoji font style", "as a glossy cartoon emoji like on Android phones",
             "the same emoji from Google's emoji set"],
    "openmoji-color": ["as a flat colour drawing with black outlines",
                       "a flat illustrated version with outlines", "in the OpenMoji style"],
}
SKIN_PHRASES = ["with {t} skin tone", "same but with {t} skin", "change the skin colour to {t}",
                "a {t}-skinned version of this"]
GENDER_PHRASES = {
    "woman": ["as a woman", "the female version of this", "same thing but a woman"],
    "man": ["as a man", "the male version of this", "same thing but a man"],
    "person": ["as a gender-neutral person", "without a specific gender",
               "the person version, neither man nor woman"],
}
REL_PHRASES = {
    "same_country_landmark": ["another landmark in the same country",
                              "a different famous building from this country",
                              "other sights worth visiting in the same country"],
    "country_flag": ["the flag of this country", "which national flag belongs to this place",
                     "the country's flag"],
    "neighbour_flag": ["the flag of a neighbouring country", "flag of a country bordering this one",
                       "a flag from next door"],
    "same_subregion_flag": ["another flag from the same part of the world",
                            "a flag of a nearby country in the same region"],
    "flag_to_emoji": ["this flag as an emoji", "the emoji version of this flag"],
    "emoji_to_flag": ["the real flag, not the emoji", "a proper rendering of this flag"],
    "same_category": ["another picture of the same kind of thing",
                      "something else from the same category", "more pictures on this topic"],
    "animal_drawing": ["as a cartoon drawing", "a children's-book illustration of this animal"],
    "animal_emoji": ["as an emoji", "the emoji for this animal"],
    "animal_photo": ["a real photo of this animal", "show me this animal in a photograph"],
}
MAX_PER_RELATION = 150


def _pick(options: list[str], key: str) -> str:
    return options[stable_hash(key) % len(options)]


def build_queries(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``images``: manifest image entries of held-out pages (main files only)."""
    by_id = {im["id"]: im for im in images}
    t = {im["id"]: im["truth"] for im in images}
    index: dict[tuple, list[str]] = defaultdict(list)
    for aid, tr in sorted(t.items()):
        typ = tr.get("type")
        if typ == "emoji":
            index[("emoji_hex", tr["hexcode"], tr["style"])].append(aid)
            index[("emoji_base", tr["base_hexcode"], tr["style"])].append(aid)
            index[("emoji_var", tr["concept"], tr["style"])].append(aid)
        if tr.get("country") and tr.get("style") == "flag":
            index[("flag", tr["country"])].append(aid)
            index[("flag_sub", tr.get("subregion"))].append(aid)
        if tr.get("country") and typ == "flag" and tr.get("style") == "openmoji-color":
            index[("flag_emoji", tr["country"])].append(aid)
        if tr.get("category") == "landmark":
            index[("landmark_cc", tr["country"])].append(aid)
        if tr.get("animal"):
            index[("animal", tr["animal"], tr.get("type"))].append(aid)
        if typ in ("clipart", "photo") and tr.get("category") not in (None, "landmark"):
            index[("cat", typ, tr["category"])].append(aid)

    out: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(rel: str, q: str, targets: list[str], phrases: list[str], extra: str = "") -> None:
        targets = sorted(set(targets) - {q})
        if not targets:
            return
        key = f"{rel}|{q}|{extra}"
        out[rel].append({"relation": rel, "query_image": q, "targets": targets,
                         "instruction": _pick(phrases, key), "paraphrases": phrases,
                         "unseen_instruction": unseen_instruction(rel, extra, key),
                         "_order": stable_hash(key)})

    for q, tr in sorted(t.items()):
        typ = tr.get("type")
        if typ == "emoji":
            for style, phrases in STYLE_PHRASES.items():
                if style == tr["style"]:
                    continue
                key = ("emoji_base", tr["base_hexcode"], style) if style == "openmoji-line" \
                    else ("emoji_hex", tr["hexcode"], style)
                add("emoji_style", q, index.get(key, []), phrases, style)
            if tr.get("gender") or tr.get("skin_tone") or tr["style"] != "openmoji-line":
                sib = [s for s in index.get(("emoji_var", tr["concept"], tr["style"]), [])]
                for tone in sorted({t[s].get("skin_tone") or "" for s in sib}):
                    if tone == (tr.get("skin_tone") or ""):
                        continue
                    tg = [s for s in sib if (t[s].get("skin_tone") or "") == tone
                          and t[s].get("gender") == tr.get("gender")]
                    words = tone or "default yellow"
                    add("skin_tone", q, tg, [p.format(t=words) for p in SKIN_PHRASES], tone)
                for g in ("woman", "man", "person"):
                    if tr.get("gender") and g != tr["gender"]:
                        tg = [s for s in sib if t[s].get("gender") == g
                              and t[s].get("skin_tone") == tr.get("skin_tone")]
                        add("gender", q, tg, GENDER_PHRASES[g], g)
        if tr.get("category") == "landmark":
            add("same_country_landmark", q, index.get(("landmark_cc", tr["country"]), []),
                REL_PHRASES["same_country_landmark"])
            add("country_flag", q, index.get(("flag", tr["country"]), []),
                REL_PHRASES["country_flag"])
        if tr.get("style") == "flag" and tr.get("country"):
            nb = [a for b in tr.get("borders", []) for a in index.get(("flag", b), [])]
            add("neighbour_flag", q, nb, REL_PHRASES["neighbour_flag"])
            add("same_subregion_flag", q, index.get(("flag_sub", tr.get("subregion")), []),
                REL_PHRASES["same_subregion_flag"])
            add("flag_to_emoji", q, index.get(("flag_emoji", tr["country"]), []),
                REL_PHRASES["flag_to_emoji"])
        if typ == "flag" and tr.get("style") == "openmoji-color" and tr.get("country"):
            add("emoji_to_flag", q, index.get(("flag", tr["country"]), []),
                REL_PHRASES["emoji_to_flag"])
        if tr.get("animal"):
            a = tr["animal"]
            if typ != "drawing":
                add("animal_drawing", q, index.get(("animal", a, "drawing"), []),
                    REL_PHRASES["animal_drawing"])
            if typ != "emoji":
                add("animal_emoji", q, index.get(("animal", a, "emoji"), []),
                    REL_PHRASES["animal_emoji"])
            if typ != "photo":
                add("animal_photo", q, index.get(("animal", a, "photo"), []),
                    REL_PHRASES["animal_photo"])
        if typ in ("clipart", "photo") and tr.get("category") not in (None, "landmark"):
            add("same_category", q, index.get(("cat", typ, tr["category"]), []),
                REL_PHRASES["same_category"])

    queries: list[dict[str, Any]] = []
    for rel in sorted(out):
        chosen = sorted(out[rel], key=lambda r: (r["_order"], r["query_image"]))[:MAX_PER_RELATION]
        for r in sorted(chosen, key=lambda r: (r["query_image"], r["instruction"])):
            r.pop("_order")
            r["query_url"] = by_id[r["query_image"]]["url"]
            r["target_urls"] = [by_id[x]["url"] for x in r["targets"]]
            queries.append(r)
    for i, q in enumerate(queries):
        q["id"] = f"q{i:05d}"
    return queries
