"""The straightforward decoding that public generative recommenders use, kept as a reference.

One user at a time through Hugging Face `generate(num_beams=...)` with a `prefix_allowed_tokens_fn` that
looks the decoded prefix up in a Python dict trie. `constrained_beam_search` must rank identically;
tests and `bench/beam_search.py` check that, and the benchmark times both.
"""

from __future__ import annotations

import torch


def dict_trie(token_codes: torch.Tensor, end_token_id: int) -> dict[tuple[int, ...], list[int]]:
    """Prefix (tuple of token ids) -> allowed next token ids, from `[items, levels]` code-token ids."""
    trie: dict[tuple[int, ...], set[int]] = {}
    for row in token_codes.tolist():
        for depth in range(len(row)):
            trie.setdefault(tuple(row[:depth]), set()).add(row[depth])
        trie.setdefault(tuple(row), set()).add(end_token_id)
    return {prefix: sorted(tokens) for prefix, tokens in trie.items()}


@torch.no_grad()
def generate_one_by_one(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, trie: dict, levels: int, beam_size: int
) -> list[list[tuple[int, ...]]]:
    """Per user, the `beam_size` decoded code-token tuples, best first, from an encoder-decoder `model`."""
    def allowed(_batch_id: int, decoded: torch.Tensor) -> list[int]:
        return trie.get(tuple(decoded[1:].tolist()), [])  # decoded[0] is the decoder start token

    ranked = []
    for row in range(len(input_ids)):
        output = model.generate(
            input_ids=input_ids[row : row + 1], attention_mask=attention_mask[row : row + 1],
            num_beams=beam_size, num_return_sequences=beam_size, max_new_tokens=levels + 1,
            do_sample=False, prefix_allowed_tokens_fn=allowed,
        )
        ranked.append([tuple(sequence[1 : levels + 1].tolist()) for sequence in output])
    return ranked
