"""Patterns read in chat text: refusals in answers, prompt-injection attempts in prompts.

Both are short, documented regular-expression lists (case-insensitive, whole words), so a reader can
see exactly what counts; they find the common English phrasings, not every paraphrase.

Refusals (`REFUSAL_PATTERNS`): the answer declines instead of answering: "I'm sorry, but I can't ...",
"I cannot help with that", "As an AI ...", "I'm not able to ...", "I won't ...".

Injection attempts (`INJECTION_PATTERNS`): text in a user message aimed at the system rather than at
the picture: overriding instructions ("ignore all previous instructions", "disregard the rules above"),
extracting them ("reveal your system prompt"), role-play jailbreaks ("you are now DAN", "pretend you
have no restrictions", "developer mode"), and chat-template role markers typed into the prompt
("<|im_start|>system", "### System:"). The operator's own system messages are not scanned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

REFUSAL_PATTERNS: dict[str, str] = {
    "apology_cannot": r"\bI(?:'m| am) (?:sorry|afraid)\b.{0,40}"
    r"\b(?:can(?:'|no)?t|cannot|unable|won't|not able)\b",
    "cannot_help": r"\bI (?:can(?:'|no)?t|cannot|won't|will not) (?:help|assist|answer|comply|provide|"
    r"describe|identify|do that|fulfil+|support)\b",
    "unable": r"\bI(?:'m| am) (?:unable|not able) to\b",
    "as_an_ai": r"\bas an (?:ai|artificial intelligence|language model)\b",
    "against_policy": r"\b(?:against|violates?) (?:my|the|our) (?:policy|policies|guidelines)\b",
}

INJECTION_PATTERNS: dict[str, str] = {
    "ignore_instructions": r"\b(?:ignore|disregard|forget|skip) (?:all |any |the |your |my )?"
    r"(?:previous |prior |above |earlier |preceding |system |original )?"
    r"(?:instructions?|prompts?|rules|directions|guidelines|context)\b",
    "override": r"\b(?:override|bypass|disable) (?:your |the |all |any )?(?:instructions?|rules|safety|"
    r"filters?|guardrails|restrictions|guidelines)\b",
    "system_prompt": r"\b(?:system prompt|system message|initial instructions|hidden instructions)\b",
    "reveal": r"\b(?:reveal|print|show|repeat|output|leak) (?:me )?(?:your|the system'?s?|the hidden) "
    r"(?:instructions|prompt|rules|configuration)\b",
    "new_instructions": r"\bnew instructions?\s*:",
    "roleplay_jailbreak": r"\b(?:you are now|from now on,? you are|pretend (?:to be|you are|you have)|"
    r"act as (?:an? )?(?:unrestricted|unfiltered|jailbroken|evil))\b",
    "jailbreak_names": r"\b(?:(?-i:DAN)|do anything now|developer mode|jailbreak(?:ed)?|god mode)\b",
    "no_restrictions": r"\b(?:no|without any) (?:restrictions|limitations|filters|rules|guidelines)\b",
    "role_marker": r"(?:<\|im_start\|>\s*system|\[INST\]|<<SYS>>|^\s*#{2,3}\s*system\s*:)",
}

_FLAGS = re.IGNORECASE | re.MULTILINE
_REFUSAL = {name: re.compile(p, _FLAGS) for name, p in REFUSAL_PATTERNS.items()}
_INJECTION = {name: re.compile(p, _FLAGS) for name, p in INJECTION_PATTERNS.items()}


@lru_cache(maxsize=65536)
def _found(text: str, kind: str) -> tuple[str, ...]:
    patterns = _REFUSAL if kind == "refusal" else _INJECTION
    text = text.replace("’", "'")
    return tuple(name for name, pattern in patterns.items() if pattern.search(text))


def refusal_matches(answer: str) -> list[str]:
    """Names of the refusal patterns found in an answer."""
    return list(_found(answer or "", "refusal"))


def is_refusal(answer: str) -> bool:
    """Whether the answer declines (matches any refusal pattern)."""
    return bool(refusal_matches(answer))


def injection_matches(texts: Iterable[str]) -> list[str]:
    """Names of the injection patterns found in the given (user) texts."""
    return list(_found("\n".join(t for t in texts if t), "injection"))


def user_texts(messages: Iterable[dict]) -> list[str]:
    """The text parts of a stored prompt that did not come from the operator (all but role system)."""
    return [str(m.get("text") or "") for m in messages if m.get("role") not in ("system", "developer")]
