"""Cleaning rules for textual codes (TID): English terms, de-duplicated case-insensitively, ordered."""

from __future__ import annotations

import re
from collections.abc import Iterable

_ALLOWED = re.compile(r"[A-Za-z0-9][A-Za-z0-9\s&+/\-,'().]*")
_EDGE = re.compile(r"^[\s\"'`\[\]{}<>*#:;.,!?-]+|[\s\"'`\[\]{}<>*#:;.,!?-]+$")
_SPACE = re.compile(r"\s+")


def clean_term(term: object) -> str | None:
    """One term with brackets, quotes and edge punctuation stripped; `None` unless English with a letter."""
    if not isinstance(term, str):
        return None
    text = _SPACE.sub(" ", _EDGE.sub("", term)).strip()
    if not text or not _ALLOWED.fullmatch(text) or not re.search(r"[A-Za-z]", text):
        return None
    return text


def clean_terms(terms: Iterable[object], max_terms: int = 10) -> list[str]:
    """Cleaned terms in their given order of importance, case-insensitive duplicates dropped, at most `max_terms`."""
    kept: list[str] = []
    seen: set[str] = set()
    for term in terms:
        cleaned = clean_term(term)
        if cleaned is not None and cleaned.lower() not in seen:
            seen.add(cleaned.lower())
            kept.append(cleaned)
        if len(kept) == max_terms:
            break
    return kept
