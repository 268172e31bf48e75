"""Questions about an emoji that its metadata answers: the training and evaluation prompts of
builtin:emoji-captioner (`vlmops train --task caption`, `vlmops eval --task caption|vqa`).

"Is there a person?" is yes for the person and family subcategories of people-body, not for hands,
body parts or person symbols (footprints, speaking head).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

PERSON_SUBCATEGORIES = frozenset(
    {"person", "person-role", "person-activity", "person-sport", "person-gesture", "person-fantasy",
     "person-resting", "family"}
)  # fmt: skip


def _keywords(row) -> str:
    return f"{row['name']}: {', '.join(str(t) for t in row['tags'])}"


def _words(value: str) -> str:
    return str(value).replace("-", " ")


# question type -> (prompt, answer from a manifest row); name and keywords are captions, the rest VQA
QUESTIONS: dict[str, tuple[str, Callable[[pd.Series], str]]] = {
    "name": ("Describe this emoji.", lambda r: str(r["name"])),
    "keywords": ("Describe this emoji with keywords.", _keywords),
    "category": ("What category is this emoji?", lambda r: _words(r["category"])),
    "subcategory": ("What subcategory is this emoji?", lambda r: _words(r["subcategory"])),
    "skin_tone": ("What skin tone is shown?", lambda r: _words(r["skin_tone"])),
    "gender": ("What gender is shown?", lambda r: str(r["gender"])),
    "person": ("Is there a person?", lambda r: "yes" if r["subcategory"] in PERSON_SUBCATEGORIES else "no"),
}


def question_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (record, question type): record index, type, prompt and reference answer."""
    rows = []
    for index, row in frame.iterrows():
        for kind, (prompt, answer) in QUESTIONS.items():
            rows.append({"record": index, "kind": kind, "prompt": prompt, "answer": answer(row)})
    return pd.DataFrame(rows)


CAPTION_KINDS = ("name", "keywords")
VQA_KINDS = tuple(kind for kind in QUESTIONS if kind not in CAPTION_KINDS)
