"""One text per item, composed from the RecBole dataset's item features.

Which fields and in what order is the config key `item_text_fields`. RecBole stores `token_seq` fields as
ids of space-split words, so a field's text is its words joined by spaces; `_` in `token` fields (brands
written as one token) becomes a space. Rule for items with no text in any field, chosen by
`item_text_missing`: `id` (default) uses the item's raw id as its text, so that it still gets a unique,
if uninformative, code; `error` stops. Either way the count and examples are logged and kept in the stats.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from recbole.utils import FeatureType

logger = logging.getLogger(__name__)
MISSING_RULES = ("id", "error")


@dataclass
class ItemTexts:
    """Texts indexed by RecBole's internal item id (index 0, the padding item, is empty)."""

    item_ids: list[str]  # raw item tokens; item_ids[0] == "[PAD]"
    fields: dict[str, list[str]]  # per-field text, for extractors with field rules (brand, category)
    texts: list[str]  # "title: ...; brand: ..." composed in `item_text_fields` order
    missing: list[str]  # raw ids of items that had no text in any field

    def report(self) -> dict:
        return {"items": len(self.item_ids) - 1, "missing_text": len(self.missing), "missing_examples": self.missing[:5]}


def _field_texts(dataset, field: str) -> list[str]:
    """The text of `field` for every internal item id, from a DataFrame or an Interaction item_feat."""
    feat, ftype = dataset.item_feat, dataset.field2type[field]
    order = [int(i) for i in feat[dataset.iid_field]]
    values = [None] * dataset.item_num
    for item, value in zip(order, feat[field]):
        values[item] = value
    vocabulary = dataset.field2id_token.get(field)
    texts = []
    for value in values:
        if value is None:
            texts.append("")
        elif ftype == FeatureType.TOKEN_SEQ:
            texts.append(" ".join(vocabulary[int(i)] for i in value if int(i) != 0))
        elif ftype == FeatureType.TOKEN:
            texts.append("" if int(value) == 0 else vocabulary[int(value)].replace("_", " "))
        else:
            number = float(value)
            texts.append("" if math.isnan(number) else f"{number:g}")
    return texts


def build_item_texts(dataset, fields: list[str], missing_rule: str = "id") -> ItemTexts:
    """Compose each item's text from `fields` of `dataset` (a RecBole Dataset with item features)."""
    if missing_rule not in MISSING_RULES:
        raise ValueError(f"item_text_missing must be one of {MISSING_RULES}, not {missing_rule!r}")
    if not fields:
        raise ValueError(f"item_text_fields is empty for dataset '{dataset.dataset_name}'")
    available = [] if dataset.item_feat is None else [f for f in dataset.item_feat.columns if f != dataset.iid_field]
    unknown = [field for field in fields if field not in available]
    if unknown:
        raise KeyError(
            f"item_text_fields names {unknown}, which dataset '{dataset.dataset_name}' has not loaded as item "
            f"features (loaded: {available}); add them to load_col['item'] and the .item file."
        )
    per_field = {field: _field_texts(dataset, field) for field in fields}
    item_ids = [str(token) for token in dataset.field2id_token[dataset.iid_field]]
    texts, missing = [""], []
    for item in range(1, dataset.item_num):
        parts = [f"{field}: {per_field[field][item]}" for field in fields if per_field[field][item]]
        if not parts:
            missing.append(item_ids[item])
            parts = [item_ids[item]]
        texts.append("; ".join(parts))
    if missing:
        message = f"{len(missing)} items have no text in {fields} (e.g. {missing[:5]})"
        if missing_rule == "error":
            raise ValueError(message + "; set item_text_missing: id to use their ids as text")
        logger.warning("%s: their raw ids are used as text (item_text_missing: id)", message)
    return ItemTexts(item_ids, per_field, texts, missing)
