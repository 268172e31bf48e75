"""Person-name spotting for the PII scan: which spans of a text look like a real person's name.

A span is 'Firstname [X.] Lastname' with a given name from the shipped list (audit/data/first_names.txt),
or an honorific followed by a surname ('Dr. Lee'). Allow-lists keep common false positives out: words
that follow a first name without being a surname (streets, weekdays, 'Cup'...), fictional surnames
('Claus') and place names that start with a given name ('Diego Garcia'). `find_names` in
`vlmops.audit.pii_detectors` wraps these spans as PII matches.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources


def _words(words: str) -> frozenset[str]:
    return frozenset(words.split())


HONORIFICS = _words("Mr Mrs Ms Mx Miss Dr Prof Sir Dame Mister Madam Herr Frau Mme Mlle")
# Capitalised words that follow a first name or honorific without being a surname.
NOT_SURNAMES = _words(
    "The A An And Or Of In On At For To With From By Is Was Are It He She They We You This That Street "
    "St Road Rd Avenue Ave Lane Park River Lake Mount Mountain Tower Bridge Square Station Airport "
    "Hotel Hospital University College School Church Cathedral Palace Castle Falls Bay Beach Coast "
    "Valley Hill Hills Island Islands Republic Kingdom City County Province Region Territory "
    "Territories North South East West Day Night Christmas Easter Cup Award Prize Festival Club Team "
    "Company Inc Ltd Corp Group Foundation Museum Library Center Centre Theatre Theater Stadium Arena "
    "Tree Star Emoji Flag Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February "
    "March April May June July August September October November December"
)
# Emoji names are not people: surnames of fictional/mythical figures (Santa/Mrs./Mx Claus) and place
# names that start with a given name (flag: Diego Garcia, flag: Svalbard & Jan Mayen).
FICTIONAL_SURNAMES = frozenset({"Claus"})
PLACE_NAMES = frozenset({"Diego Garcia", "Jan Mayen"})
_WORD_RE = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")


@cache
def first_names() -> frozenset[str]:
    """The shipped list of common given names (audit/data/first_names.txt)."""
    text = resources.files("vlmops.audit").joinpath("data/first_names.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def _capitalised(word: str) -> bool:
    return len(word) >= 2 and word[0].isupper() and any(c.islower() for c in word[1:])


def _surname(word: str) -> bool:
    return _capitalised(word) and word not in NOT_SURNAMES and word not in FICTIONAL_SURNAMES


def name_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of 'Firstname [X.] Lastname' with a listed given name, and honorific + surname."""
    if not any(c.isupper() for c in text):
        return []
    words = list(_WORD_RE.finditer(text))
    names = first_names()
    out = []
    for i, w in enumerate(words[:-1]):
        gap = text[w.end() : words[i + 1].start()]
        if w.group() in HONORIFICS and re.fullmatch(r"\.? {1,2}", gap) and _surname(words[i + 1].group()):
            out.append((w.start(), words[i + 1].end()))
        elif w.group() in names and re.fullmatch(r" {1,2}", gap):
            j = i + 1
            initial = len(words[j].group()) == 1 and words[j].group().isupper() and j + 1 < len(words)
            if initial and re.fullmatch(r"\. {1,2}", text[words[j].end() : words[j + 1].start()]):
                j += 1  # middle initial
            last = words[j].group()
            if _surname(last) and f"{w.group()} {last}" not in PLACE_NAMES and not last.isupper():
                out.append((w.start(), words[j].end()))
    return out
