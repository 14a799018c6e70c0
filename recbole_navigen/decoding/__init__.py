"""Constrained decoding over item identifiers: the batched trie-constrained beam search that TIGER and
NaviGen share, and the steppers that drive a Hugging Face model through it one token at a time."""
