"""Prefix trie over collaborative item codes (CID), queried in batches by constrained beam search.

Each depth d keeps the sorted int64 keys of the code prefixes of length d that exist (mixed radix over the
level sizes) and a dense bool table of their allowed continuations, so one `searchsorted` answers a whole
batch of prefixes without a Python loop per beam.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class PrefixTrie:
    """Valid continuations of code prefixes; column `k_max` of `allowed` means "end: a complete code"."""

    def __init__(self, codes: torch.Tensor, level_sizes: Sequence[int] | None = None) -> None:
        """`codes[i]` is item i's code; rows holding a negative value (padding) are ignored."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim != 2:
            raise ValueError(f"codes must be [n_items, L], got shape {tuple(codes.shape)}")
        items = (codes >= 0).all(dim=1).nonzero().squeeze(1)
        codes = codes[items]
        if len(codes) == 0:
            raise ValueError("a prefix trie needs at least one item code")
        sizes = list(level_sizes) if level_sizes is not None else (codes.max(dim=0).values + 1).tolist()
        if len(sizes) != codes.shape[1]:
            raise ValueError(f"{len(sizes)} level sizes for codes of {codes.shape[1]} levels")
        if math.prod(sizes) >= 2**62:  # keys must not overflow int64
            raise ValueError(f"level sizes {sizes} are too large to encode prefixes as int64")
        self.level_sizes: list[int] = [int(size) for size in sizes]
        self.depth = codes.shape[1]
        self.k_max = max(self.level_sizes)
        self._sizes = torch.tensor(self.level_sizes, dtype=torch.long)
        if (codes >= self._sizes).any():
            raise ValueError(f"a code value is out of range of the level sizes {self.level_sizes}")
        self._keys: list[torch.Tensor] = []
        self._tables: list[torch.Tensor] = []
        for d in range(self.depth + 1):
            self._add_depth(codes, d)
        self._items = self._complete_items(codes, items)

    def _add_depth(self, codes: torch.Tensor, d: int) -> None:
        """Store the unique prefixes of length `d` and, for each, the level-d values that follow it."""
        keys, inverse = torch.unique(self._encode(codes[:, :d]), sorted=True, return_inverse=True)
        table = torch.zeros(len(keys), self.k_max + 1, dtype=torch.bool)
        following = codes[:, d] if d < self.depth else torch.full_like(inverse, self.k_max)
        table[inverse, following] = True
        self._keys.append(keys)
        self._tables.append(table)

    def _complete_items(self, codes: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Item index of each complete code, aligned with the sorted keys of depth L."""
        keys = self._keys[self.depth]
        if len(keys) != len(codes):
            raise ValueError("two items share the same code")
        position = torch.searchsorted(keys, self._encode(codes))
        return torch.empty_like(items).scatter_(0, position, items)

    def _encode(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Mixed-radix int64 key of each prefix (values assumed in range)."""
        keys = torch.zeros(prefixes.shape[0], dtype=torch.long, device=prefixes.device)
        for level in range(prefixes.shape[1]):
            keys = keys * self.level_sizes[level] + prefixes[:, level]
        return keys

    def _lookup(self, prefixes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row of each prefix in its depth's table, and whether the prefix exists at all."""
        if prefixes.ndim != 2 or not 0 <= prefixes.shape[1] <= self.depth:
            raise ValueError(f"prefixes must be [B, d] with 0 <= d <= {self.depth}, got {tuple(prefixes.shape)}")
        d = prefixes.shape[1]
        in_range = ((prefixes >= 0) & (prefixes < self._sizes[:d])).all(dim=1)
        # Out-of-range values give keys that may collide with real ones: clamp, then mask by `in_range`.
        keys = self._encode(prefixes.clamp(min=0))
        known = self._keys[d]
        position = torch.searchsorted(known, keys).clamp(max=len(known) - 1)
        return position, in_range & (known[position] == keys)

    def allowed(self, prefixes: torch.Tensor) -> torch.Tensor:
        """BoolTensor [B, k_max + 1]: next values that keep each prefix a prefix of an item code; last column = end."""
        position, found = self._lookup(prefixes)
        return self._tables[prefixes.shape[1]][position] & found.unsqueeze(1)

    def item_of(self, codes: torch.Tensor) -> torch.Tensor:
        """LongTensor [B]: the item index holding each complete code, -1 where none does."""
        if codes.ndim != 2 or codes.shape[1] != self.depth:
            raise ValueError(f"complete codes must be [B, {self.depth}], got {tuple(codes.shape)}")
        position, found = self._lookup(codes)
        return torch.where(found, self._items[position], -1)

    def to(self, device: torch.device | str) -> PrefixTrie:
        """Move the lookup tables to `device` (in place) so queries stay on the beam search's device."""
        self._sizes = self._sizes.to(device)
        self._keys = [keys.to(device) for keys in self._keys]
        self._tables = [table.to(device) for table in self._tables]
        self._items = self._items.to(device)
        return self
