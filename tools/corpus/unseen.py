"""A second wording of every held-out query, written once by hand and never used to train.

The corpus's eval queries (tools.corpus.evalq) and the instruction writers draw on related
vocabularies, so a model could score well by matching the writers' phrasings. These are
worded as people type requests instead: questions, polite and terse requests, other verbs
and word order, longer sentences, a few typos. Nothing in services/ or trainer/ reads this
module; the evaluation reports both wordings side by side (docs/quality.md).
"""

from __future__ import annotations

from tools.corpus.model import stable_hash

STYLE_WORDS = {
    "openmoji-line": ["drawn only with black outlines, nothing coloured in",
                      "as uncoloured line art", "outline only, no fill colours pls"],
    "fluent-3d": ["rendered with depth and shading like a little plastic toy",
                  "in a shiny three dimensional look", "looking like a 3-d model"],
    "noto": ["the way Android phones draw it", "in Google's emoji look",
             "as the Andriod emoji"],
    "openmoji-color": ["as a flat cartoon with dark outlines and plain colours",
                       "flat coloured clip art with outlines",
                       "in that open-source flat emoji look"],
}
TONE_WORDS = {
    "light": ["pale", "very fair", "light"], "medium-light": ["fairly light", "light-medium",
                                                                "medium-light"],
    "medium": ["mid-brown", "medium", "olive"], "medium-dark": ["fairly dark", "medium-dark",
                                                              "brown"],
    "dark": ["very dark", "deep brown", "dark"], "": ["yellow cartoon", "default yellow",
                                                      "no particular"],
}
GENDER_WORDS = {"woman": ["a woman", "a girl or lady", "female"],
                "man": ["a man", "a guy", "male"],
                "person": ["someone of no specific gender", "a neutral person", "gender neutral"]}

TEMPLATES = {
    "emoji_style": ["could you show me this one {x}?", "I'd like the very same symbol, {x}",
                    "same icon but {x}", "find me this picture {x} instead"],
    "skin_tone": ["can I get this with {x} skin?", "I want this exact one but the skin "
                  "should look {x}", "swap the skin colour for {x} one", "same emoji, {x} skinned"],
    "gender": ["what would this look like as {x}?", "show this one again but as {x}",
               "I need the version where it's {x}", "same pose and look, just {x}"],
    "same_country_landmark": ["what else could I go and see in that country?",
                              "I'm planning a trip there, show me other famous places nearby",
                              "more tourist spots of the same nation",
                              "other monuments in tht country"],
    "country_flag": ["which flag do they fly in the country where this is?",
                     "show me the national flag of where this place is",
                     "flag of the nation this building is in"],
    "neighbour_flag": ["which countries share a border with this one? show their flag",
                       "a flag of one of the countries right next to it",
                       "the flag of a country it borders on"],
    "same_subregion_flag": ["flags of other countries in that area of the world",
                            "what other flags are there from around this region?",
                            "another regional neighbour's flag, not this one"],
    "flag_to_emoji": ["how does this flag look as a phone emoji?",
                      "the little emoji icon of this flag"],
    "emoji_to_flag": ["I want the actual flag, not a cartoon icon",
                      "show the real printed version of this flag"],
    "same_category": ["got any more pictures like this one?",
                      "show me similar stuff of the same sort",
                      "other images of this kind of object pls"],
    "animal_drawing": ["is there a drawn cartoon of this animal?",
                       "a sketch or illustration of the same creature"],
    "animal_emoji": ["what's the emoji for this animal?", "this creature as a phone icon"],
    "animal_photo": ["show me a real picture of this animal",
                     "a photograph of the actual creature, not a drawing"],
}


def unseen_instruction(relation: str, slot: str, key: str) -> str:
    """The hand-written wording of one query (`slot`: the style, tone or gender the
    relation asks for; `key`: a stable id that picks among the phrasings)."""
    templates = TEMPLATES.get(relation)
    if not templates:
        return ""
    words = {"emoji_style": STYLE_WORDS, "skin_tone": TONE_WORDS,
             "gender": GENDER_WORDS}.get(relation)
    h = stable_hash("unseen|" + key)
    text = templates[h % len(templates)]
    if words is not None:
        choices = words.get(slot)
        if not choices:
            return ""
        text = text.format(x=choices[(h // len(templates)) % len(choices)])
    return text
