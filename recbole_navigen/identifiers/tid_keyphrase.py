"""The offline TID extractor `keyphrase`: TF-IDF key phrases with rules for category and brand.

For each item, in order of importance:
1. the leaf of its category path (`tid_category_field`, levels split on ` | `), the item's subject;
2. its brand (`tid_brand_field`);
3. the 1- to 3-word phrases of its title and description (`tid_phrase_fields`) with the highest TF-IDF
   weight over the catalogue (English stop words removed, title words counted twice), keeping only
   phrases of 2+ characters that occur verbatim in the text and skipping any phrase that shares a word
   with a term already chosen (so terms add information instead of restating it).
Terms then go through the shared cleaning rules (`terms.clean_terms`). Deterministic; no model needed.
"""

from __future__ import annotations

import re

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from recbole_navigen.identifiers.item_text import ItemTexts
from recbole_navigen.identifiers.terms import clean_terms

NAME = "keyphrase"
_TOKENS = re.compile(r"[a-z0-9][a-z0-9'&+-]*")


def _words(text: str) -> str:
    """Lower-cased word tokens that start with a letter ("18i20" and "2nd" are dropped, not cut)."""
    return " ".join(token.rstrip("'&+-") for token in _TOKENS.findall(text.lower()) if token[0].isalpha())


def _overlaps(phrase: str, chosen: list[str]) -> bool:
    used = {word for term in chosen for word in term.split()}
    return any(word in used for word in phrase.split())


def extract_terms_keyphrase(
    items: ItemTexts,
    max_terms: int,
    phrase_fields: list[str],
    category_field: str | None = None,
    brand_field: str | None = None,
) -> list[list[str]]:
    """Terms for every internal item id (index 0, the padding item, gets none)."""
    for field in [*phrase_fields, category_field, brand_field]:
        if field and field not in items.fields:
            raise KeyError(f"TID field '{field}' is not one of item_text_fields {list(items.fields)}")
    n = len(items.item_ids)
    documents = [
        _words(" ".join([items.fields[phrase_fields[0]][i]] * 2 + [items.fields[f][i] for f in phrase_fields[1:]]))
        if i else "" for i in range(n)
    ]
    vectorizer = TfidfVectorizer(ngram_range=(1, 3), stop_words="english", sublinear_tf=True,
                                 token_pattern=r"\S+", min_df=1)
    weights = vectorizer.fit_transform(documents).tocsr()
    vocabulary = vectorizer.get_feature_names_out()
    terms: list[list[str]] = [[]]
    for item in range(1, n):
        lead = []
        if category_field:
            lead.append(items.fields[category_field][item].split(" | ")[-1])
        if brand_field:
            lead.append(items.fields[brand_field][item])
        chosen = [_words(term) for term in lead if term]
        row = weights.getrow(item)
        text = f" {documents[item]} "
        for column in row.indices[np.argsort(-row.data, kind="stable")]:
            phrase = vocabulary[column]
            if len(chosen) >= max_terms:
                break
            if len(phrase) > 1 and f" {phrase} " in text and not _overlaps(phrase, chosen):
                chosen.append(phrase)
        terms.append(clean_terms(lead + chosen[len([t for t in lead if t]):], max_terms))
    return terms
