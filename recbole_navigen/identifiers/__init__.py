"""Dual item identifiers: item text, item embeddings, collaborative codes (CID), textual codes (TID),
their on-disk cache and the item tokenizer with its prefix trie. Knows nothing of models."""
