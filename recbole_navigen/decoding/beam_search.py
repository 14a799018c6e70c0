"""Batched beam search that only ever spells item codes that exist.

Every step scores all beams of all users at once: one model call on `[batch * beams]` rows with the KV
cache, one vectorised trie query for the allowed next code of every beam, one `topk` per user. Scores
follow Hugging Face's beam search (log-softmax over the whole vocabulary, disallowed tokens at -inf,
summed over the code tokens and the end token), so results match `generate(num_beams=...,
prefix_allowed_tokens_fn=...)` while skipping its per-beam Python callback.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from recbole_navigen.identifiers.trie import PrefixTrie


class Stepper(Protocol):
    """A model advanced one token per row, keeping its own cache."""

    def start(self) -> torch.Tensor:
        """Read the inputs, one row per user; return the logits of the first code token `[users, vocab]`."""

    def expand(self, beams: int, steps: int = 0) -> None:
        """Copy each user's cache to `beams` rows (user-major), after `start`, with room for `steps` more
        tokens where the stepper can reserve it."""

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed `tokens` `[rows]`; return next-token logits `[rows, vocab]`."""

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the cache of `rows` (beam i continues from row `rows[i]`)."""


@dataclass
class BeamResult:
    """Beams per user, best first: `items` (-1 where no item), `scores` (summed log-probs), `codes`."""

    items: torch.Tensor  # [batch, beams]
    scores: torch.Tensor  # [batch, beams]
    codes: torch.Tensor  # [batch, beams, levels]


@contextmanager
def _timed(timings: dict | None, key: str):
    start = perf_counter()
    yield
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + perf_counter() - start


@torch.no_grad()
def constrained_beam_search(
    stepper: Stepper,
    batch_size: int,
    trie: PrefixTrie,
    token_table: torch.Tensor,
    end_token_id: int,
    beam_size: int,
    timings: dict | None = None,
) -> BeamResult:
    """Beam search over `trie`'s codes, then the end token, for `batch_size` users.

    `token_table[level, code]` is the vocabulary id of a code token (-1 past a level's size). The first
    step runs once per user (all beams start identical) before the cache is copied to every beam.
    `timings`, when given, accumulates seconds in the model (`model`) and in the trie and masks (`trie`).
    """
    device = token_table.device
    levels, width = trie.depth, trie.k_max
    with _timed(timings, "model"):
        log_probs = F.log_softmax(stepper.start().float(), dim=-1)
    rows, scores = batch_size, torch.zeros((batch_size, 1), device=device)
    prefix = torch.empty((batch_size, 0), dtype=torch.long, device=device)
    for level in range(levels + 1):
        with _timed(timings, "trie"):
            allowed = trie.allowed(prefix)
            if level < levels:
                candidates = log_probs.gather(1, token_table[level].clamp(min=0).expand(rows, width))
                candidates = candidates.masked_fill(~allowed[:, :width], float("-inf"))
            else:
                candidates = log_probs[:, end_token_id : end_token_id + 1].masked_fill(~allowed[:, width:], float("-inf"))
            total = (scores.reshape(rows, 1) + candidates).reshape(batch_size, -1)
            if total.shape[1] < beam_size:  # first level smaller than the beam: the rest stay at -inf
                total = F.pad(total, (0, beam_size - total.shape[1]), value=float("-inf"))
            scores, index = total.topk(beam_size, dim=1)
            beams = rows // batch_size  # 1 at the first step, beam_size after
            source = (index // candidates.shape[1]).clamp(max=beams - 1)
            origin = (torch.arange(batch_size, device=device).unsqueeze(1) * beams + source).reshape(-1)
            if level == levels:
                prefix = prefix[origin]
                break
            code = (index % candidates.shape[1]).reshape(-1)
            prefix = torch.cat([prefix[origin], code.unsqueeze(1)], dim=1)
            # Beams left at -inf (fewer valid codes than beams) may carry a code past the level's size.
            tokens = token_table[level, code].clamp(min=0)
        with _timed(timings, "model"):
            if rows == batch_size:
                stepper.expand(beam_size, levels)  # beam i of a user came from its only row: a plain copy
            else:
                stepper.reorder(origin)
            rows = batch_size * beam_size
            log_probs = F.log_softmax(stepper.step(tokens).float(), dim=-1)
    with _timed(timings, "trie"):
        items = trie.item_of(prefix).reshape(batch_size, beam_size)
        items = items.masked_fill(torch.isinf(scores), -1)
    return BeamResult(items, scores, prefix.reshape(batch_size, beam_size, levels))


def beams_to_scores(result: BeamResult, n_items: int) -> torch.Tensor:
    """RecBole's full-sort score table `[batch, n_items]`: each beam's score at its item, -inf elsewhere."""
    scores = torch.full((len(result.items), n_items), float("-inf"), device=result.scores.device)
    found = result.items >= 0
    rows = torch.arange(len(result.items), device=scores.device).unsqueeze(1).expand_as(result.items)
    scores[rows[found], result.items[found]] = result.scores[found]
    return scores


class Seq2SeqStepper:
    """Drives a transformers encoder-decoder (e.g. T5): encodes once, then one decoder token per step."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, start_token_id: int) -> None:
        self.model, self.start_token_id = model, start_token_id
        self.input_ids, self.attention_mask = input_ids, attention_mask

    def start(self) -> torch.Tensor:
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self.encoder_outputs = self.model.get_encoder()(input_ids=self.input_ids, attention_mask=self.attention_mask)
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        starts = torch.full((len(self.input_ids),), self.start_token_id, device=self.input_ids.device)
        return self.step(starts)

    def expand(self, beams: int, steps: int = 0) -> None:
        # The cross-attention keys and values were computed once per user; copies serve every beam.
        self.cache.batch_repeat_interleave(beams)
        hidden = self.encoder_outputs.last_hidden_state.repeat_interleave(beams, dim=0)
        self.encoder_outputs = type(self.encoder_outputs)(last_hidden_state=hidden)
        self.attention_mask = self.attention_mask.repeat_interleave(beams, dim=0)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        output = self.model(
            encoder_outputs=self.encoder_outputs,
            attention_mask=self.attention_mask,
            decoder_input_ids=tokens.unsqueeze(1),
            cache=self.cache,  # updated in place
            use_cache=True,
        )
        return output.logits[:, -1]

    def reorder(self, rows: torch.Tensor) -> None:
        # Beams only ever continue beams of the same user, whose cross-attention keys and values are
        # identical: reordering the decoder's self-attention cache is enough.
        self.cache.self_attention_cache.reorder_cache(rows)


class ReservedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with room for more positions: a step
    writes its token in place, where `DynamicLayer` copies the whole cache (`torch.cat`) every step. A beam
    reorder moves only the positions after `shared`: the prompt, the same in every beam of a user, stays."""

    def __init__(self, layer: DynamicLayer, beams: int, reserve: int) -> None:
        """`layer`'s rows (one per user) copied to `beams` rows each, with room for `reserve` more positions."""
        super().__init__()
        self.device, self.is_initialized = layer.keys.device, True
        self.length = self.shared = layer.keys.shape[2]  # every beam of a user starts from its prompt
        self._keys, self._values = (self._copies(tensor, beams, reserve) for tensor in (layer.keys, layer.values))
        self._expose()

    @staticmethod
    def _copies(tensor: torch.Tensor, beams: int, reserve: int) -> torch.Tensor:
        users, heads, length, dim = tensor.shape
        buffer = tensor.new_empty((users * beams, heads, length + reserve, dim))
        buffer.view(users, beams, heads, length + reserve, dim)[:, :, :, :length] = tensor.unsqueeze(1)
        return buffer

    def _expose(self) -> None:
        self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            raise RuntimeError(f"cache reserved for {self._keys.shape[-2]} positions, asked for {end}")
        self._keys[:, :, self.length : end], self._values[:, :, self.length : end] = key_states, value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        moved = slice(self.shared, self.length)
        self._keys[:, :, moved] = self._keys[beam_idx, :, moved]
        self._values[:, :, moved] = self._values[beam_idx, :, moved]
        self._expose()


class CausalStepper:
    """Drives a causal LM: each user's prompt (left-padded) is prefilled once, its cache copied to every
    beam (with room for the steps to come), then one token per step."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.model, self.input_ids, self.attention_mask = model, input_ids, attention_mask

    def start(self) -> torch.Tensor:
        from transformers.cache_utils import DynamicCache

        positions = (self.attention_mask.cumsum(1) - 1).clamp(min=0)  # left padding: count real tokens only
        self.cache = DynamicCache()
        output = self.model(input_ids=self.input_ids, attention_mask=self.attention_mask, position_ids=positions,
                            cache=self.cache, use_cache=True)
        self.position = positions[:, -1:] + 1
        return output.logits[:, -1]

    def expand(self, beams: int, steps: int = 0) -> None:
        if steps and all(type(layer) is DynamicLayer for layer in self.cache.layers):
            self.cache.layers = [ReservedLayer(layer, beams, steps) for layer in self.cache.layers]
        else:
            self.cache.batch_repeat_interleave(beams)
        self.attention_mask = self.attention_mask.repeat_interleave(beams, dim=0)
        self.position = self.position.repeat_interleave(beams, dim=0)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        ones = self.attention_mask.new_ones((len(tokens), 1))
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=1)
        output = self.model(input_ids=tokens.unsqueeze(1), attention_mask=self.attention_mask,
                            position_ids=self.position, cache=self.cache, use_cache=True)
        self.position = self.position + 1
        return output.logits[:, -1]

    def reorder(self, rows: torch.Tensor) -> None:
        self.cache.reorder_cache(rows)
