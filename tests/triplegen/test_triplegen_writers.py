"""The metadata writer on crafted pairs, the shared validator, and lexical diversity."""

from __future__ import annotations

from services.triplegen.diversity import diversity
from services.triplegen.meta import ImageMeta
from services.triplegen.validate import check
from services.triplegen.writers.base import PairContext
from services.triplegen.writers.metadata import MetadataWriter


def meta(i: int, alt: str, caption: str = "", context: str = "", title: str = "",
         src: str = "") -> ImageMeta:
    return ImageMeta(i, alt=alt, caption=caption, context=context, page_title=title,
                     source_url=src or f"http://example.org/img/{i}.png")


def write(q: ImageMeta, t: ImageMeta, pair_id: int = 1, per_pair: int = 2):
    return MetadataWriter(per_pair).write_one(PairContext(pair_id, q.page_title, "", q, t, 0.6))


def test_skin_tone_and_gender_change_is_described_not_named():
    title = "Health worker: skin tones and genders in Fluent 3D"
    q = meta(1, "health worker: light skin tone", "health worker — light skin tone", title=title)
    t = meta(2, "woman health worker: dark skin tone", "woman health worker — dark skin tone",
             title=title)
    res = write(q, t)
    assert res.error is None and res.instructions
    first = res.instructions[0]
    assert "skin_tone" in first.relation and "gender" in first.relation
    low = first.text.lower()
    assert "dark" in low and ("woman" in low or "female" in low)
    assert "woman health worker" not in low


def test_style_change_between_renderings_of_the_same_emoji():
    title = "Bullet train across emoji styles"
    q = meta(1, "bullet train", "Bullet train in Fluent 3D", "Fluent 3D: soft 3D models.", title)
    t = meta(2, "bullet train", "Bullet train in OpenMoji line art",
             "OpenMoji line art: black-and-white line drawings without any fill.", title)
    res = write(q, t)
    assert res.instructions[0].relation == "style_change"
    low = res.instructions[0].text.lower()
    assert any(w in low for w in ("line", "outline", "black", "monochrome", "sketch"))


def test_landmarks_of_one_country_with_years_give_place_and_age_relations():
    title = "Famous landmarks of India"
    q = meta(1, "Gateway of India", "Gateway of India",
             "The Gateway of India is in Mumbai. The structure was constructed in 1924.", title)
    t = meta(2, "Charminar", "Charminar",
             "The Charminar in Hyderabad was constructed in 1591 by Mohammed Quli Qutab Shah.",
             title)
    rels = {i.relation for i in write(q, t, per_pair=3).instructions}
    assert {"older_newer", "same_place"} <= rels
    texts = " ".join(i.text for i in write(q, t, per_pair=3).instructions).lower()
    assert "india" in texts and "charminar" not in texts


def test_flags_use_knowledge_from_the_surrounding_text():
    title = "Flags of Eastern Europe"
    q = meta(1, "Flag of Belarus", "Flag of Belarus",
             "Belarus (Republic of Belarus); capital: Minsk. It borders Lithuania, Latvia, "
             "Poland, Russia, Ukraine.", title)
    t = meta(2, "Flag of Ukraine", "Flag of Ukraine",
             "Ukraine (Ukraine); capital: Kyiv. It borders Belarus, Hungary.", title)
    res = write(q, t, per_pair=3)
    rels = [i.relation for i in res.instructions]
    assert rels[0] == "neighbour" and "capital" in rels
    assert all("flag of ukraine" not in i.text.lower() for i in res.instructions)
    assert "kyiv" in " ".join(i.text for i in res.instructions).lower()


def test_facts_about_a_neighbouring_figure_are_not_used():
    # Mined context often holds the previous figure's paragraph: Minsk is not Kyiv's flag.
    title = "Flags of Eastern Europe"
    q = meta(1, "Flag of Moldova", "Flag of Moldova", "", title)
    t = meta(2, "Flag of Ukraine", "Flag of Ukraine",
             "Belarus (Republic of Belarus); capital: Minsk. It borders Ukraine.", title)
    # Facts follow from which country the flag is of, never from the nearby paragraph.
    assert t.capital == "Kyiv" and "Belarus" in t.borders and "Lithuania" not in t.borders
    caps = [i.text for i in write(q, t, per_pair=3).instructions if i.relation == "capital"]
    assert caps and all("Kyiv" in c and "Minsk" not in c for c in caps)


def test_same_input_gives_same_output_and_pairs_vary():
    q = meta(1, "cook: light skin tone", "cook — light skin tone", title="Cook variants")
    t = meta(2, "cook: dark skin tone", "cook — dark skin tone", title="Cook variants")
    a = [i.text for i in write(q, t, pair_id=7).instructions]
    assert a == [i.text for i in write(q, t, pair_id=7).instructions]
    many = {write(q, t, pair_id=k).instructions[0].text for k in range(40)}
    assert len(many) >= 8  # phrasings vary across pairs


def test_validator_rejects_leaks_urls_and_non_english():
    t = meta(5, "Golden Temple", "Golden Temple", src="http://x.org/img/goldenTemple.jpg")
    assert check("find another landmark in this country", t) is None
    assert check("find the golden temple please", t) == "leaks the target's title or file name"
    assert "file name" in check("show goldenTemple instead", t)
    assert check("see http://example.com/a.png", t) == "contains a URL or file name"
    assert check("другой памятник в этой стране", t) == "not English"
    assert check("", t) == "empty"
    assert check("x " * 60, t) == "60 words outside 2..32"
    assert check("a" * 201, t) == "length 201 outside 8..200"


def test_diversity_counts_distinct_ngrams():
    d = diversity(["find a red one", "find a red one", "make it blue"])
    assert d["distinct_1_in_sample"] == 7  # find a red one make it blue
    assert d["distinct_2_in_sample"] == 5
    assert d["distinct_instructions"] == 2
    assert 0 < d["distinct_3_ratio"] <= 1


def test_skin_tone_change_also_uses_everyday_tone_words():
    """Besides Unicode's name ("medium"), the writer names the tone the way people do
    (Fitzpatrick descriptors such as "olive"), so such requests are trained on at all."""
    from services.triplegen.writers.metadata import TONE_SYNONYMS, _tone_mods

    q = meta(1, "cook: light skin tone", "cook — light skin tone", title="Cook variants")
    t = meta(2, "cook: medium skin tone", "cook — medium skin tone", title="Cook variants")
    mods, imps = _tone_mods(q, t)
    words = [w for w in TONE_SYNONYMS["medium"] if any(w in m for m in mods + imps)]
    assert len(words) == 1, (mods, imps)
    assert any("darker" in m for m in mods)
