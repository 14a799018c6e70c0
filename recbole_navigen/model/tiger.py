"""TIGER (Rajput et al., NeurIPS 2023): generative retrieval over semantic IDs with a small T5.

The encoder reads the codes of the user's last items (optionally after a hashed user token); the decoder
spells the next item's code, then an end token. Ranking is the shared trie-constrained beam search, so
only real items come out, and `full_sort_predict` hands RecBole a score per item (-inf off the beams).
"""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from transformers import T5Config, T5ForConditionalGeneration

from recbole_navigen.decoding.beam_search import Seq2SeqStepper, beams_to_scores, constrained_beam_search
from recbole_navigen.distributed import rank_zero_first
from recbole_navigen.identifiers.build import build_identifiers

PAD, END = 0, 1  # T5 also starts decoding from the pad token


class TIGER(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        with rank_zero_first():  # several processes: one builds the identifiers, the others read them
            identifiers = build_identifiers(config, dataset)
        self.trie = identifiers.tokenizer.trie
        sizes = identifiers.tokenizer.level_sizes
        self.levels = len(sizes)
        self.beam_size = config["beam_size"]
        if self.beam_size < max(config["topk"]):
            raise ValueError(f"beam_size {self.beam_size} must be at least max(topk) = {max(config['topk'])}")

        # Vocabulary: pad, end, the codes of each level in turn, then the user buckets.
        offsets = torch.tensor([2 + sum(sizes[:level]) for level in range(self.levels)])
        codes = identifiers.tokenizer.codes_tensor
        self.register_buffer("item_tokens", torch.where(codes >= 0, codes + offsets, PAD), persistent=False)
        table = torch.full((self.levels, max(sizes)), -1, dtype=torch.long)
        for level, size in enumerate(sizes):
            table[level, :size] = offsets[level] + torch.arange(size)
        self.register_buffer("token_table", table, persistent=False)
        self.user_buckets = config["user_hash_buckets"]
        self.user_offset = 2 + sum(sizes)

        self.t5 = T5ForConditionalGeneration(T5Config(
            vocab_size=self.user_offset + self.user_buckets,
            d_model=config["d_model"], d_kv=config["d_kv"], d_ff=config["d_ff"], num_heads=config["num_heads"],
            num_layers=config["num_encoder_layers"], num_decoder_layers=config["num_decoder_layers"],
            dropout_rate=config["dropout_rate"], feed_forward_proj="relu",
            pad_token_id=PAD, eos_token_id=END, decoder_start_token_id=PAD,
        ))

    def encoder_inputs(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        """History codes `[batch, items * levels]` (user token first when enabled) and their mask."""
        history = self.item_tokens[interaction[self.ITEM_SEQ]].flatten(1)
        if self.user_buckets:
            users = self.user_offset + interaction[self.USER_ID] % self.user_buckets
            history = torch.cat([users.unsqueeze(1), history], dim=1)
        return history, (history != PAD).long()

    def target_tokens(self, items: torch.Tensor) -> torch.Tensor:
        end = torch.full((len(items), 1), END, dtype=torch.long, device=items.device)
        return torch.cat([self.item_tokens[items], end], dim=1)

    def calculate_loss(self, interaction) -> torch.Tensor:
        input_ids, attention_mask = self.encoder_inputs(interaction)
        labels = self.target_tokens(interaction[self.POS_ITEM_ID])
        return self.t5(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    @torch.no_grad()
    def predict(self, interaction) -> torch.Tensor:
        """Log-likelihood of each given item's code and end token."""
        input_ids, attention_mask = self.encoder_inputs(interaction)
        labels = self.target_tokens(interaction[self.ITEM_ID])
        logits = self.t5(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
        return logits.log_softmax(-1).gather(2, labels.unsqueeze(2)).squeeze(2).sum(1)

    @torch.no_grad()
    def beam_search(self, interaction, timings: dict | None = None):
        """The shared constrained beam search over this model's items."""
        input_ids, attention_mask = self.encoder_inputs(interaction)
        self.trie = self.trie.to(input_ids.device)
        stepper = Seq2SeqStepper(self.t5, input_ids, attention_mask, start_token_id=PAD)
        return constrained_beam_search(stepper, len(input_ids), self.trie, self.token_table, END,
                                       self.beam_size, timings)

    @torch.no_grad()
    def full_sort_predict(self, interaction) -> torch.Tensor:
        return beams_to_scores(self.beam_search(interaction), self.n_items)
