"""Sampling item codes that exist: the rollouts of GRPO's cid2cid task.

Each user's prompt is prefilled once and its cache copied to `samples` rows; at every level the next code
is drawn from the model's softmax restricted to the codes the trie allows after the row's prefix, then the
end token closes the code. Every sample therefore names a catalogue item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recbole_navigen.decoding.beam_search import Stepper
from recbole_navigen.identifiers.trie import PrefixTrie


@dataclass
class SampledCodes:
    """`samples` codes per user, user-major: `codes` [rows, levels], their `tokens` [rows, levels + 1]
    (code tokens then the end token) and `items` [rows]."""

    codes: torch.Tensor
    tokens: torch.Tensor
    items: torch.Tensor


@torch.no_grad()
def constrained_sample(
    stepper: Stepper,
    batch_size: int,
    trie: PrefixTrie,
    token_table: torch.Tensor,
    end_token_id: int,
    samples: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> SampledCodes:
    """Draw `samples` codes per user from the model's distribution over the trie's codes."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    device = token_table.device
    first = stepper.start().float()
    stepper.expand(samples, trie.depth)
    logits = first.repeat_interleave(samples, dim=0)
    rows, width = batch_size * samples, trie.k_max
    prefix = torch.empty((rows, 0), dtype=torch.long, device=device)
    tokens = []
    for level in range(trie.depth):
        if level:
            logits = stepper.step(tokens[-1]).float()
        allowed = trie.allowed(prefix)[:, :width]
        candidates = logits.gather(1, token_table[level].clamp(min=0).expand(rows, width)) / temperature
        probabilities = torch.softmax(candidates.masked_fill(~allowed, float("-inf")), dim=-1)
        code = torch.multinomial(probabilities.cpu(), 1, generator=generator).squeeze(1).to(device)
        prefix = torch.cat([prefix, code.unsqueeze(1)], dim=1)
        tokens.append(token_table[level, code])
    tokens.append(torch.full((rows,), end_token_id, dtype=torch.long, device=device))
    return SampledCodes(prefix, torch.stack(tokens, dim=1), trie.item_of(prefix))
