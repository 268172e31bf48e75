"""Emoji names, keywords, categories, skin tones and genders from emojibase-data (CLDR, English)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

TONES = {1: "light", 2: "medium-light", 3: "medium", 4: "medium-dark", 5: "dark"}
SKIN_TONE_VALUES = ("none", *TONES.values(), "mixed")
GENDER_VALUES = ("none", "man", "woman", "person", "mixed")
_GENDER_WORDS = {
    "man": "man", "men": "man", "boy": "man",
    "woman": "woman", "women": "woman", "girl": "woman",
    "person": "person", "people": "person",
}  # fmt: skip
_GENDER_SIGNS = {"2642": "man", "2640": "woman"}
_TONE_SUFFIX = re.compile(r"(,\s*)?(light|medium-light|medium|medium-dark|dark) skin tone")


def normalise_hex(hexcode: str) -> str:
    """Upper-case code points without variation selectors, so vendors' spellings match."""
    parts = [p for p in hexcode.upper().split("-") if p not in ("FE0F", "FE0E")]
    return "-".join(parts)


def skin_tone_of(tone: int | list[int] | None) -> str:
    """emojibase's tone field as one of SKIN_TONE_VALUES."""
    if tone is None:
        return "none"
    tones = {tone} if isinstance(tone, int) else set(tone)
    return TONES[tones.pop()] if len(tones) == 1 else "mixed"


def gender_of(label: str, hexcode: str) -> str:
    """man / woman / person where the name or a gender sign says so, 'mixed' for several, else none."""
    found = {_GENDER_SIGNS[p] for p in hexcode.split("-") if p in _GENDER_SIGNS}
    base = _TONE_SUFFIX.sub("", label)
    found |= {_GENDER_WORDS[w] for w in re.findall(r"[a-z]+", base.lower()) if w in _GENDER_WORDS}
    if len(found) > 1 and found - {"person"}:
        found.discard("person")  # "person" beside a gendered word adds nothing
    if not found:
        return "none"
    return found.pop() if len(found) == 1 else "mixed"


@dataclass(frozen=True)
class EmojiInfo:
    """What the manifest records about one emoji code point sequence."""

    hexcode: str
    emoji: str
    name: str
    unicode_name: str
    tags: list[str] = field(default_factory=list)
    category: str = ""
    subcategory: str = ""
    concept: str = ""
    concept_name: str = ""
    skin_tone: str = "none"
    gender: str = "none"

    @property
    def texts(self) -> list[str]:
        """Captions: CLDR name, a prompt-style sentence, the Unicode name and the keywords."""
        texts = [self.name, f"an emoji of {self.name}"]
        if self.unicode_name:
            texts.append(self.unicode_name.lower())
        if self.tags:
            texts.append(", ".join(self.tags))
        return texts

    def as_row(self) -> dict:
        """Manifest columns contributed by the label data."""
        return {
            "unified": self.hexcode,
            "emoji": self.emoji,
            "name": self.name,
            "unicode_name": self.unicode_name,
            "tags": list(self.tags),
            "texts": self.texts,
            "category": self.category,
            "subcategory": self.subcategory,
            "concept": self.concept,
            "concept_name": self.concept_name,
            "label": f"{self.category}/{self.subcategory}/{self.concept_name}",
            "skin_tone": self.skin_tone,
            "gender": self.gender,
        }


class EmojiLabels:
    """Lookup from any vendor's hexcode spelling to its EmojiInfo."""

    def __init__(self, infos: dict[str, EmojiInfo]):
        self._infos = infos

    @classmethod
    def from_emojibase(cls, package_dir: Path) -> EmojiLabels:
        """Read emojibase-data's English data, group/subgroup names and Unicode names."""
        data = json.loads((package_dir / "en" / "data.json").read_text())
        messages = json.loads((package_dir / "en" / "messages.json").read_text())
        unicode_names = json.loads((package_dir / "meta" / "unicode-names.json").read_text())
        groups = {g["order"]: g["key"] for g in messages["groups"]}
        subgroups = {g["order"]: g["key"] for g in messages["subgroups"]}
        infos: dict[str, EmojiInfo] = {}
        for entry in data:
            concept = normalise_hex(entry["hexcode"])
            for variant in [entry, *entry.get("skins", [])]:
                infos[normalise_hex(variant["hexcode"])] = EmojiInfo(
                    hexcode=variant["hexcode"],
                    emoji=variant["emoji"],
                    name=variant["label"],
                    unicode_name=unicode_names.get(variant["hexcode"], ""),
                    tags=list(entry.get("tags", [])),
                    category=groups.get(entry.get("group"), "component"),
                    subcategory=subgroups.get(entry.get("subgroup"), "other"),
                    concept=concept,
                    concept_name=entry["label"],
                    skin_tone=skin_tone_of(variant.get("tone")),
                    gender=gender_of(variant["label"], variant["hexcode"]),
                )
        return cls(infos)

    def knows(self, hexcode: str) -> bool:
        """Whether emojibase has this sequence."""
        return normalise_hex(hexcode) in self._infos

    def lookup(self, hexcode: str) -> EmojiInfo | None:
        """The EmojiInfo for a hexcode in any vendor's spelling, or None."""
        return self._infos.get(normalise_hex(hexcode))
