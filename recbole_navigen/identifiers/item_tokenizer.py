"""The item tokenizer: each item's collaborative code (CID) as text tokens, its textual code (TID), the
mapping between raw item ids, internal ids and codes, the code tokens of an HF tokenizer, and its on-disk form."""

from __future__ import annotations

import json
import re
import string
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken

from recbole_navigen.fileio import write_text_atomic
from recbole_navigen.identifiers.trie import PrefixTrie

FILE_NAME = "item_tokenizer.json"
_LETTERS = string.ascii_lowercase
# Whitespace is tolerated around and between tokens: some decoders (e.g. WordLevel) join tokens with spaces.
_CID = re.compile(r"\s*<\|cid_begin\|>((?:\s*<[a-z]_(?:0|[1-9]\d*)>)+)\s*<\|cid_end\|>\s*")
_LEVEL = re.compile(r"<([a-z])_(\d+)>")


class ItemTokenizer:
    """Item `i` (RecBole internal id; 0 is padding, without a code) <-> raw id, CID tokens and TID terms."""

    BEGIN, END = "<|cid_begin|>", "<|cid_end|>"

    def __init__(
        self,
        item_ids: list[str],
        codes: np.ndarray,
        terms: list[list[str]],
        level_sizes: list[int] | None = None,
    ) -> None:
        """`codes` is [n_items, L] with row 0 all -1; `level_sizes` defaults to the largest value + 1 per level."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or not len(item_ids) == len(codes) == len(terms):
            raise ValueError(
                f"need one id, code row and term list per item: {len(item_ids)} ids, "
                f"codes of shape {codes.shape}, {len(terms)} term lists"
            )
        if not 1 <= codes.shape[1] <= len(_LETTERS):
            raise ValueError(f"codes need 1 to {len(_LETTERS)} levels, got {codes.shape[1]}")
        if len(codes) < 2 or (codes[0] != -1).any():
            raise ValueError("row 0 (RecBole's padding item) must be all -1, followed by at least one item")
        self.item_ids = list(item_ids)
        self.terms = [list(item_terms) for item_terms in terms]
        self.level_sizes = list(level_sizes) if level_sizes is not None else (codes[1:].max(axis=0) + 1).tolist()
        self.level_sizes = [int(size) for size in self.level_sizes]
        if len(self.level_sizes) != codes.shape[1]:
            raise ValueError(f"{len(self.level_sizes)} level sizes for codes of {codes.shape[1]} levels")
        if (codes[1:] < 0).any() or (codes[1:] >= np.array(self.level_sizes)).any():
            raise ValueError(f"every item but padding needs a code within the level sizes {self.level_sizes}")
        self.codes_tensor = torch.from_numpy(codes.copy())
        self._index = {raw_id: index for index, raw_id in enumerate(self.item_ids)}
        self._by_code = {tuple(row): index for index, row in enumerate(codes.tolist()) if index > 0}
        if len(self._by_code) != len(codes) - 1:
            raise ValueError("two items share the same code")

    @property
    def depth(self) -> int:
        """Number of code levels L."""
        return len(self.level_sizes)

    @property
    def n_items(self) -> int:
        """Number of items, padding included."""
        return len(self.item_ids)

    @cached_property
    def trie(self) -> PrefixTrie:
        """Prefix trie over all item codes, built on first use."""
        return PrefixTrie(self.codes_tensor, self.level_sizes)

    # ----- single items -----

    def code(self, index: int) -> tuple[int, ...]:
        """The CID of item `index` as integers."""
        if not 0 < index < self.n_items:
            raise IndexError(f"item index {index} has no code (valid: 1..{self.n_items - 1})")
        return tuple(self.codes_tensor[index].tolist())

    def cid(self, index: int) -> str:
        """The CID of item `index` as token text, e.g. `<|cid_begin|><a_12><b_7><c_201><|cid_end|>`."""
        levels = "".join(self.level_token(level, value) for level, value in enumerate(self.code(index)))
        return f"{self.BEGIN}{levels}{self.END}"

    def tid(self, index: int) -> list[str]:
        """The TID terms of item `index`."""
        return list(self.terms[index])

    def index_of_item(self, raw_id: str) -> int:
        """Internal id of the raw item token `raw_id`."""
        try:
            return self._index[raw_id]
        except KeyError:
            raise KeyError(f"unknown item id {raw_id!r}") from None

    def parse_cid(self, text: str) -> tuple[int, ...] | None:
        """The code written in `text` if it is exactly one well-formed CID of this tokenizer, else None."""
        match = _CID.fullmatch(text)
        if match is None:
            return None
        levels = _LEVEL.findall(match.group(1))
        if len(levels) != self.depth:
            return None
        code = tuple(int(value) for _, value in levels)
        letters_ok = all(letter == _LETTERS[level] for level, (letter, _) in enumerate(levels))
        in_range = all(value < size for value, size in zip(code, self.level_sizes))
        return code if letters_ok and in_range else None

    def item_of_cid(self, text: str) -> int | None:
        """Internal id of the item whose CID is `text`, None when malformed or held by no item."""
        code = self.parse_cid(text)
        return None if code is None else self._by_code.get(code)

    # ----- vocabulary -----

    @staticmethod
    def level_token(level: int, value: int) -> str:
        """Token of `value` at code level `level` (levels are named a, b, c, ...)."""
        return f"<{_LETTERS[level]}_{value}>"

    def code_tokens(self) -> list[str]:
        """BEGIN, END and the token of every value of every level, so a model can name any code."""
        sizes = enumerate(self.level_sizes)
        levels = [self.level_token(level, value) for level, size in sizes for value in range(size)]
        return [self.BEGIN, self.END, *levels]

    def add_to_tokenizer(self, hf_tokenizer) -> int:
        """Register the code tokens in an HF tokenizer; returns how many were new (0 on a second call)."""
        # normalized=False: a normalizer (lowercasing, space marking) must not change what is matched.
        tokens = [AddedToken(token, normalized=False, special=False) for token in self.code_tokens()]
        return hf_tokenizer.add_tokens(tokens)

    def token_id_table(self, hf_tokenizer) -> torch.Tensor:
        """LongTensor [L, K_max]: vocabulary id of `<level_value>`, -1 where `value` is past the level's size."""
        vocab = hf_tokenizer.get_vocab()
        table = torch.full((self.depth, max(self.level_sizes)), -1, dtype=torch.long)
        for level, size in enumerate(self.level_sizes):
            table[level, :size] = torch.tensor([_vocab_id(vocab, self.level_token(level, v)) for v in range(size)])
        return table

    def begin_id(self, hf_tokenizer) -> int:
        """Vocabulary id of BEGIN."""
        return _vocab_id(hf_tokenizer.get_vocab(), self.BEGIN)

    def end_id(self, hf_tokenizer) -> int:
        """Vocabulary id of END."""
        return _vocab_id(hf_tokenizer.get_vocab(), self.END)

    # ----- disk -----

    def save(self, folder: str | Path) -> Path:
        """Write `folder/item_tokenizer.json` atomically; returns its path."""
        path = Path(folder) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "item_ids": self.item_ids,
            "codes": self.codes_tensor.tolist(),
            "terms": self.terms,
            "level_sizes": self.level_sizes,
        }
        write_text_atomic(path, json.dumps(state))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ItemTokenizer:
        """Read what `save` wrote in `folder`."""
        state = json.loads((Path(folder) / FILE_NAME).read_text(encoding="utf-8"))
        return cls(state["item_ids"], np.array(state["codes"], dtype=np.int64), state["terms"], state["level_sizes"])


def _vocab_id(vocab: dict[str, int], token: str) -> int:
    """Id of `token`, or a clear error when the code tokens were never added."""
    if token not in vocab:
        raise KeyError(f"{token!r} is not in the tokenizer's vocabulary: call add_to_tokenizer first")
    return vocab[token]
