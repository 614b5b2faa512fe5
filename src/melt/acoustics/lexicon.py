"""Mapping a free-text voice description ("a deep, quiet murmur") to low / mid / high, per attribute.

Rules (documented in docs/acoustics.md, tested in tests/acoustics/test_lexicon.py):

1. An answer that is exactly `low`, `mid`, `medium` or `high` (the structured schema) maps directly.
2. Comparisons with a norm are reduced to their first term: "louder than normal" counts as "louder", not also as
   "normal". "above average" / "below average" count as high / low.
3. Each lexicon term found asserts its class, unless a negation ("not", "no", "never", "without", "n't",
   "neither", "nor", "rather than", "instead of") precedes it within four words in the same clause.
4. A negated term excludes its class; a hedged negation of an extreme ("not too loud", "not overly slow") asserts
   `mid` instead.
5. If the asserted classes, minus the excluded ones, are exactly one class, that is the answer. If nothing is
   asserted, the classes that remain after the exclusions decide ("neither loud nor quiet" -> mid). If exclusions
   would remove every asserted class ("loud, but not shouting"), the assertions win.
6. Anything else (no term, or conflicting terms such as "moderate to high", "soft then loud") is `None`:
   the caller counts it as unknown rather than guessing.
"""

from __future__ import annotations

import re

import pandas as pd

CLASSES: tuple[str, ...] = ("low", "mid", "high")
ATTRIBUTES: tuple[str, ...] = ("pitch", "loudness", "rhythm_speed")

_MID_WORDS = [
    "moderate",
    "medium",
    "mid",
    "mid-range",
    "midrange",
    "middle",
    "normal",
    "average",
    "regular",
    "typical",
    "natural",
    "neutral",
    "standard",
    "ordinary",
    "balanced",
    "conversational",
]

#: attribute -> class -> terms (phrases allowed; hyphens and spaces interchangeable in the text).
LEXICON: dict[str, dict[str, list[str]]] = {
    "pitch": {
        "high": [
            "high",
            "higher",
            "high-pitched",
            "raised",
            "elevated",
            "shrill",
            "squeaky",
            "squeaking",
            "squeal",
            "squealing",
            "piercing",
            "falsetto",
            "screechy",
            "screeching",
            "shrieking",
            "soprano",
            "above average",
            "above normal",
            "treble",
        ],
        "low": [
            "low",
            "lower",
            "low-pitched",
            "deep",
            "deeper",
            "bass",
            "baritone",
            "gravelly",
            "gruff",
            "rumbling",
            "below average",
            "below normal",
        ],
        "mid": [*_MID_WORDS, "mid-pitched", "mid pitch"],
    },
    "loudness": {
        "high": [
            "loud",
            "louder",
            "loudly",
            "shout",
            "shouts",
            "shouting",
            "shouted",
            "yell",
            "yells",
            "yelling",
            "yelled",
            "scream",
            "screams",
            "screaming",
            "screamed",
            "booming",
            "bellowing",
            "bellowed",
            "roaring",
            "thunderous",
            "blaring",
            "raised",
            "raised voice",
            "high",
            "higher",
            "elevated",
            "forceful",
            "above average",
            "above normal",
            "at the top of",
        ],
        "low": [
            "quiet",
            "quieter",
            "quietly",
            "soft",
            "softer",
            "softly",
            "whisper",
            "whispers",
            "whispering",
            "whispered",
            "hushed",
            "low",
            "lower",
            "muted",
            "subdued",
            "faint",
            "murmur",
            "murmuring",
            "murmured",
            "mumble",
            "mumbling",
            "mumbled",
            "barely audible",
            "hardly audible",
            "under the breath",
            "under his breath",
            "under her breath",
            "under their breath",
            "below average",
            "below normal",
            "no louder than a whisper",
            "not much louder than a whisper",
            "barely above a whisper",
        ],
        "mid": [*_MID_WORDS, "indoor voice"],
    },
    "rhythm_speed": {
        "high": [
            "fast",
            "faster",
            "quick",
            "quicker",
            "quickly",
            "rapid",
            "rapidly",
            "hurried",
            "rushed",
            "rushing",
            "brisk",
            "racing",
            "speedy",
            "rapid-fire",
            "high",
            "above average",
        ],
        "low": [
            "slow",
            "slower",
            "slowly",
            "sluggish",
            "drawn-out",
            "drawn out",
            "drawling",
            "drawl",
            "deliberate",
            "leisurely",
            "unhurried",
            "lingering",
            "languid",
            "plodding",
            "measured",
            "low",
            "below average",
        ],
        "mid": [*_MID_WORDS, "steady", "even pace", "medium-paced", "moderately paced"],
    },
}

_NEGATION = re.compile(r"\b(?:not|no|never|without|neither|nor|rather than|instead of)\b|n't\b")
_HEDGE = re.compile(r"\b(?:too|overly|very|particularly|especially|excessively|that|so|terribly|extremely)\b")
#: "louder than (his) usual" -> "louder": the norm named after "than" is the reference, not a description.
_COMPARISON = re.compile(
    r"\bthan\s+(?:(?:his|her|their|its|the|a|an|one's|my|your)\s+)?"
    r"(?:normal|usual|average|typical|regular|before|expected|ordinary)(?:ly)?\b"
)
#: A negation reaches no further than the end of its clause.
_CLAUSE = re.compile(r"[,.;:!?()]|\b(?:but|though|although|yet|however|while|whereas|then)\b")
_DIRECT = {"low": "low", "mid": "mid", "medium": "mid", "high": "high"}


def _normal_term(term: str) -> str:
    return re.sub(r"[- ]+", " ", term.lower()).strip()


_COMPILED: dict[str, tuple[re.Pattern[str], dict[str, str]]] = {}


def _patterns(attribute: str) -> tuple[re.Pattern[str], dict[str, str]]:
    """One regex of all the attribute's terms, and term -> class."""
    if attribute not in LEXICON:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {list(LEXICON)}")
    if attribute not in _COMPILED:
        term_class = {_normal_term(t): cls for cls, terms in LEXICON[attribute].items() for t in terms}
        # Longest first, so "low-pitched" wins over "low" and "barely audible" is one term.
        alternatives = sorted(term_class, key=len, reverse=True)
        escaped = [re.escape(t).replace(r"\ ", r"[- ]+") for t in alternatives]
        pattern = re.compile(r"(?<!\w)(?:" + "|".join(escaped) + r")(?!\w)")
        _COMPILED[attribute] = (pattern, term_class)
    return _COMPILED[attribute]


def map_description(text: object, attribute: str) -> str | None:
    """low / mid / high for one description of `attribute` ("pitch", "loudness", "rhythm_speed"), or None."""
    pattern, term_class = _patterns(attribute)
    if text is None or text is pd.NA or (isinstance(text, float) and pd.isna(text)):
        return None
    clean = str(text).lower().replace("’", "'").strip()
    direct = _DIRECT.get(clean.strip(" .!\"'"))
    if direct:
        return direct
    clean = _COMPARISON.sub("", clean)
    asserted: set[str] = set()
    excluded: set[str] = set()
    previous_end = 0
    for match in pattern.finditer(clean):
        cls = term_class[_normal_term(match.group(0))]
        before = clean[previous_end : match.start()]
        # Only the text since the last clause break, and since the previous term, can negate this term.
        breaks = list(_CLAUSE.finditer(before))
        scope = before[breaks[-1].end() :] if breaks else before
        words = scope.split()
        window = " ".join(words[-4:])
        negation = list(_NEGATION.finditer(window))
        previous_end = match.end()
        if not negation:
            asserted.add(cls)
        elif cls != "mid" and _HEDGE.search(window[negation[-1].end() :]):
            asserted.add("mid")
        else:
            excluded.add(cls)
    if asserted:
        remaining = asserted - excluded or asserted
    else:
        remaining = set(CLASSES) - excluded if excluded else set()
    return next(iter(remaining)) if len(remaining) == 1 else None


def map_descriptions(values, attribute: str) -> pd.Series:
    """`map_description` over a column; missing results are <NA>."""
    index = values.index if isinstance(values, pd.Series) else None
    return pd.Series([map_description(v, attribute) for v in values], index=index, dtype="string")
