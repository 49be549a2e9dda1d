"""The offline writer on pages written in other words than the demo corpus generator's: the
same relations come out of paraphrases, other word order and other vocabulary, because the
writer reads named entities and general vocabulary, not sentence templates. Pages go through
the miner's own HTML parser, as mined pages do."""

from __future__ import annotations

import pytest

from services.mining.htmlparse import parse_page
from services.triplegen.meta import ImageMeta
from services.triplegen.writers.base import PairContext
from services.triplegen.writers.metadata import MetadataWriter


def figures(html: str) -> list[ImageMeta]:
    page = parse_page(html.encode(), "https://pages.example/a/", 50)
    return [ImageMeta(i, alt=c.alt, caption=c.caption, context=c.context,
                      page_title=page.title, source_url=c.url)
            for i, c in enumerate(page.candidates)]


def relations(q: ImageMeta, t: ImageMeta, per_pair: int = 3) -> dict[str, str]:
    res = MetadataWriter(per_pair).write_one(PairContext(q.image_id * 100 + t.image_id,
                                                         q.page_title, "", q, t, 0.6))
    assert res.error is None, res.error
    return {i.relation: i.text for i in res.instructions}


def _fig(src: str, alt: str, caption: str = "", para: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure><img src='{src}' alt='{alt}'>{cap}</figure>" + (
        f"<p>{para}</p>" if para else "")


# The corpus generator writes "Flag of X" / "X (official); capital: C. It borders A, B."
# These say the same things, or nothing at all, in other words and orders.
FLAG_PAGES = {
    "generator": ("Flags of Eastern Europe", [
        ("Flag of Belarus", "Flag of Belarus",
         "Belarus (Republic of Belarus); capital: Minsk. It borders Latvia, Lithuania, Poland, "
         "Russia, Ukraine."),
        ("Flag of Ukraine", "Flag of Ukraine",
         "Ukraine (Ukraine); capital: Kyiv. It borders Belarus, Hungary, Moldova."),
        ("Flag of Poland", "Flag of Poland", "Poland; capital: Warsaw.")]),
    "paraphrased": ("Banners of the east: a vexillology tour", [
        ("Belarusian national flag", "Red and green, adopted in 1995",
         "Minsk is where the government sits; Lithuania and Latvia lie to the north."),
        ("Ukraine — national flag", "Blue over yellow",
         "Seat of government: Kyiv. Its western neighbours include Poland and Hungary."),
        ("The banner of the Republic of Poland", "White above red", "")]),
    "terse": ("Europe", [
        ("flag: Belarus", "", ""), ("Ukrainian flag", "", ""), ("Poland flag", "", "")]),
}


@pytest.mark.parametrize("wording", sorted(FLAG_PAGES))
def test_flag_pages_in_any_wording_give_neighbour_and_capital(wording):
    title, figs = FLAG_PAGES[wording]
    html = f"<title>{title}</title><h1>{title}</h1>" + "".join(
        _fig(f"f{i}.png", alt, cap, para) for i, (alt, cap, para) in enumerate(figs))
    belarus, ukraine, poland = figures(html)
    assert (belarus.flag_of, ukraine.flag_of, poland.flag_of) == ("Belarus", "Ukraine", "Poland")
    rels = relations(belarus, ukraine)
    assert "neighbour" in rels and "capital" in rels, rels
    assert "Kyiv" in rels["capital"] and "Minsk" not in rels["capital"]
    assert "neighbour" in relations(ukraine, poland)  # Ukraine borders Poland
    # no wording makes Belarus's own facts come from the figure next to it
    assert belarus.capital == "Minsk" and ukraine.capital == "Kyiv"


LANDMARK_PAGES = {
    "generator": ("Famous landmarks of India",
                  [("Gateway of India", "Gateway of India",
                    "The Gateway of India is in Mumbai. The structure was constructed in 1924."),
                   ("Charminar", "Charminar",
                    "The Charminar in Hyderabad was constructed in 1591.")]),
    "paraphrased": ("India: ten sights worth the trip",
                    [("Arch on the Mumbai waterfront", "The Gateway, Mumbai, India",
                      "Completed in 1924 to greet a king, the arch faces the harbour."),
                     ("Four minarets over the old city", "Charminar (Hyderabad, India)",
                      "Dating from 1591, the mosque and monument marks the city centre.")]),
    "title_only": ("What to see when visiting the Republic of India",
                   [("A basalt arch by the sea", "", "It was completed in 1924."),
                    ("A square monument with four minarets", "",
                     "The monument was built in 1591.")]),
}


@pytest.mark.parametrize("wording", sorted(LANDMARK_PAGES))
def test_landmark_pages_in_any_wording_give_place_and_age(wording):
    title, figs = LANDMARK_PAGES[wording]
    html = f"<title>{title}</title>" + "".join(
        f"<p>{para}</p>" + _fig(f"l{i}.jpg", alt, cap) for i, (alt, cap, para) in enumerate(figs))
    gateway, charminar = figures(html)
    assert gateway.place_key == charminar.place_key == "India"
    rels = relations(gateway, charminar)
    assert {"same_place", "older_newer"} <= set(rels), rels
    assert "India" in rels["same_place"]
    assert "older" in rels["older_newer"] or "before" in rels["older_newer"]


EMOJI_WORDINGS = {
    "generator": ("health worker: light skin tone", "woman health worker: dark skin tone"),
    "paraphrased": ("Health worker with light skin", "Female health worker, dark-skinned"),
    "unicode_modifier": ("health worker, type-1-2", "woman health worker type-6"),
    "reordered": ("light-skinned health worker", "health worker (woman), skin tone: dark"),
}


@pytest.mark.parametrize("wording", sorted(EMOJI_WORDINGS))
def test_skin_tone_and_gender_in_any_wording(wording):
    qa, ta = EMOJI_WORDINGS[wording]
    html = "<title>Health worker emoji</title>" + _fig("q.png", qa) + _fig("t.png", ta)
    q, t = figures(html)
    assert (q.tone, t.tone, t.gender) == ("light", "dark", "woman")
    rel, text = next(iter(relations(q, t).items()))
    assert "skin_tone" in rel and "gender" in rel, rel
    assert "dark" in text.lower() and "woman health worker" not in text.lower()


STYLE_WORDINGS = {
    "generator": ("Bullet train in Fluent 3D", "Bullet train in OpenMoji line art"),
    "paraphrased": ("Bullet train, a soft 3-D render", "Bullet train: pen-and-ink outline"),
    "other_order": ("Three-dimensional bullet train", "Black-and-white bullet train drawing"),
}


@pytest.mark.parametrize("wording", sorted(STYLE_WORDINGS))
def test_style_change_in_any_wording(wording):
    qc, tc = STYLE_WORDINGS[wording]
    html = "<title>Bullet train</title>" + _fig("q.png", "bullet train", qc) + \
        _fig("t.png", "bullet train", tc)
    q, t = figures(html)
    assert (q.style, t.style) == ("3d", "line")
    assert "style_change" in relations(q, t)


def test_words_that_only_look_like_places_are_not_places():
    """Country names as ordinary words ('Turkey sandwich', 'guinea pig') and a flag that is
    not a country's do not become places or flags."""
    html = ("<title>Food clip art</title>" + _fig("a.png", "Turkey sandwich", "Roast turkey") +
            _fig("b.png", "guinea pig", "A guinea pig") + _fig("c.png", "Checkered flag"))
    sandwich, pig, chequered = figures(html)
    assert sandwich.place is None and pig.place is None
    assert chequered.flag_of is None
