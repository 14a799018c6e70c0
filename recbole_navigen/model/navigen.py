"""NaviGen as a RecBole model: a causal LM that reads items as dual identifiers (CID tokens and TID terms).

Training mixes the tasks of `navigen_tasks` (cid2cid, cid2tid, tid2cid; cid2ins once supervision exists)
drawn per example by `task_ratios`, with the loss on answer tokens only. `stage: 1` trains only the new
code-token rows and the head; `stage: 2` trains LoRA adapters (or everything, `finetune: full`) with the
new rows. Prediction forces the answer prefix `{"target_cid":"<|cid_begin|>` and runs the shared
trie-constrained beam search, so RecBole's full-ranking evaluator scores NaviGen like any other model.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_navigen.decoding.beam_search import (
    CausalStepper,
    beams_to_scores,
    constrained_beam_search,
)
from recbole_navigen.identifiers.build import build_identifiers
from recbole_navigen.llm.backbone import (
    apply_lora,
    extend_vocabulary,
    load_backbone,
    load_trained_weights,
    train_new_rows_only,
)
from recbole_navigen.model.navigen_tasks import (
    CID2CID_ANSWER_PREFIX,
    cid2cid_prompt,
    cid2cid_sample,
    cid2tid_sample,
    encode_for_training,
    encode_prompts,
    histories,
    task_mix,
    tid2cid_sample,
)
from recbole_navigen.teacher.jsonparse import extract_json

logger = logging.getLogger(__name__)


class NaviGen(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        identifiers = build_identifiers(config, dataset)
        self.items = identifiers.tokenizer
        self.item_texts = identifiers.texts
        self.identifiers_key = identifiers.folder.name
        self.llm_path = config["llm_path"]
        self.history_format = config["history_format"]
        self.max_length = config["max_length"]
        self.beam_size = config["beam_size"]
        if self.beam_size < max(config["topk"]):
            raise ValueError(f"beam_size {self.beam_size} must be at least max(topk) = {max(config['topk'])}")

        llm, self.hf_tokenizer = load_backbone(config["llm_path"], config["pretrained_cache_dir"],
                                               identifiers.texts[1:], config["tiny_backbone"])
        new_ids = extend_vocabulary(llm, self.hf_tokenizer, self.items.code_tokens())
        if config["init_from"]:
            load_trained_weights(llm, self._stage_weights(config["init_from"]))
        self.llm = self._trainable(llm, new_ids, config)
        self.register_buffer("token_table", self.items.token_id_table(self.hf_tokenizer), persistent=False)
        self.begin_id, self.end_id = self.items.begin_id(self.hf_tokenizer), self.items.end_id(self.hf_tokenizer)
        self.trie = self.items.trie

        self.task_ratios = self._task_ratios(config["task_ratios"])
        self.tid2cid_items = torch.tensor([i for i in range(1, self.items.n_items) if self.items.tid(i)])
        self.generator = torch.Generator().manual_seed(config["seed"])
        self.task_counts: Counter[str] = Counter()

    def state_dict(self, *args, **kwargs):
        """Only the weights training changes (adapters, code-token rows, head): RecBole's checkpoints then
        hold no copy of the frozen backbone, which `llm_path` rebuilds."""
        trainable = {name for name, parameter in self.named_parameters() if parameter.requires_grad}
        full = super().state_dict(*args, **kwargs)
        return type(full)((key, value) for key, value in full.items() if key in trainable)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        trainable = {name for name, parameter in self.named_parameters() if parameter.requires_grad}
        missing = sorted(trainable - set(state_dict))
        if strict and missing:
            raise RuntimeError(f"NaviGen checkpoint lacks trained weights {missing[:5]} (stage or adapters differ?)")
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def _read_checkpoint(self, checkpoint: str) -> dict:
        """A NaviGen checkpoint written by RecBole's trainer, checked against this model's identifiers."""
        # Our own RecBole checkpoint: it pickles the Config beside the weights, which the safe loader refuses.
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # load_state_dict places it
        self.load_other_parameter(state.get("other_parameter"))
        return state["state_dict"]

    def _stage_weights(self, checkpoint: str) -> dict[str, torch.Tensor]:
        """The backbone weights an earlier stage's checkpoint holds (its trained weights only)."""
        return {key.removeprefix("llm."): value for key, value in self._read_checkpoint(checkpoint).items()}

    def load_checkpoint(self, checkpoint: str) -> None:
        """Restore the trained weights of a checkpoint this model's configuration wrote."""
        self.load_state_dict(self._read_checkpoint(checkpoint))

    def other_parameter(self) -> dict:
        """Saved beside the weights by RecBole: which identifiers and backbone they belong to."""
        return {"identifiers": self.identifiers_key, "llm_path": self.llm_path}

    def load_other_parameter(self, para: dict | None) -> None:
        if para and para.get("identifiers") != self.identifiers_key:
            raise RuntimeError(f"checkpoint made with identifiers {para.get('identifiers')}, "
                               f"this model uses {self.identifiers_key}: item codes would not match")

    @staticmethod
    def _trainable(llm, new_ids: torch.Tensor, config):
        """Stage 1: new rows + head only. Stage 2: LoRA adapters + new rows, or every weight."""
        if config["stage"] == 1:
            train_new_rows_only(llm, new_ids, config["stage1_head"])
            return llm
        if config["stage"] != 2:
            raise ValueError(f"stage must be 1 or 2, not {config['stage']!r}")
        if config["finetune"] == "lora":
            return apply_lora(llm, new_ids, config["lora_r"], config["lora_alpha"], config["lora_dropout"],
                              config["lora_target_modules"])
        if config["finetune"] != "full":
            raise ValueError(f"finetune must be lora or full, not {config['finetune']!r}")
        return llm

    @staticmethod
    def _task_ratios(ratios: dict) -> dict:
        ratios = dict(ratios)
        if ratios.get("cid2ins"):
            logger.info("NaviGen: cid2ins skipped, no instruction supervision is configured")
            ratios["cid2ins"] = 0.0
        return ratios

    def samples(self, interaction) -> list:
        """One training chat per example, its task drawn by `task_ratios`."""
        history = histories(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        targets = interaction[self.POS_ITEM_ID].tolist()
        tasks = task_mix(self.task_ratios, len(targets), self.generator)
        self.task_counts.update(tasks)
        samples = []
        for task, past, target in zip(tasks, history, targets, strict=True):
            if task == "cid2cid":
                samples.append(cid2cid_sample(self.items, past, target, self.history_format))
            elif task == "cid2tid":
                samples.append(cid2tid_sample(self.items, target))
            else:  # tid2cid, over items that have terms (an empty TID names no item)
                pick = torch.randint(len(self.tid2cid_items), (1,), generator=self.generator)
                samples.append(tid2cid_sample(self.items, int(self.tid2cid_items[pick])))
        return samples

    def training_batch(self, interaction) -> dict[str, torch.Tensor]:
        """The batch's chats as padded token ids, attention mask and answer-only labels, on the model's device."""
        batch = encode_for_training(self.samples(interaction), self.hf_tokenizer, self.max_length)
        return {key: value.to(self.token_table.device) for key, value in batch.items()}

    def calculate_loss(self, interaction) -> torch.Tensor:
        return self.llm(**self.training_batch(interaction)).loss

    @torch.no_grad()
    def beam_search(self, interaction, timings: dict | None = None):
        """Top `beam_size` next items per user by the constrained beam search on the cid2cid prompt."""
        history = histories(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        prompts = [cid2cid_prompt(self.items, past, self.history_format) for past in history]
        batch = encode_prompts(prompts, self.hf_tokenizer, CID2CID_ANSWER_PREFIX)
        if not (batch["input_ids"][:, -1] == self.begin_id).all():
            raise RuntimeError("the cid2cid prompts must end with the CID begin token the codes follow")
        device = self.token_table.device
        self.trie = self.trie.to(device)
        stepper = CausalStepper(self.llm, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        return constrained_beam_search(stepper, len(prompts), self.trie, self.token_table, self.end_id,
                                       self.beam_size, timings)

    @torch.no_grad()
    def describe(self, items: list[int], max_new_tokens: int = 96) -> list[list[str] | None]:
        """The model's own TID for each item (greedy cid2tid answers); None where the answer is not the
        JSON object `{"target_tid": [...]}` it was trained to write."""
        prompts = [replace(cid2tid_sample(self.items, item), answer="") for item in items]
        batch = encode_prompts(prompts, self.hf_tokenizer, "")
        device = self.token_table.device
        output = self.llm.generate(input_ids=batch["input_ids"].to(device),
                                   attention_mask=batch["attention_mask"].to(device),
                                   max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=self.hf_tokenizer.pad_token_id)
        answers = self.hf_tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        terms = []
        for answer in answers:
            try:
                parsed = extract_json(answer)
            except ValueError:
                parsed = None
            tid = parsed.get("target_tid") if isinstance(parsed, dict) else None
            terms.append(tid if isinstance(tid, list) and all(isinstance(t, str) for t in tid) else None)
        return terms

    @torch.no_grad()
    def full_sort_predict(self, interaction) -> torch.Tensor:
        return beams_to_scores(self.beam_search(interaction), self.n_items)
