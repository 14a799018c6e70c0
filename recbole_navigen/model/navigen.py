"""NaviGen as a RecBole model: a causal LM that reads items as dual identifiers (CID tokens and TID terms).

Training mixes the tasks of `navigen_tasks` (cid2cid, cid2tid, tid2cid, and cid2ins when `supervision_path`
names the teacher's instruction supervision) drawn per example by `task_ratios`, with the loss on answer
tokens only. `stage: 1` trains only the new
code-token rows and the head; `stage: 2` trains LoRA adapters (or everything, `finetune: full`) with the
new rows. Prediction forces the answer prefix `{"target_cid":"<|cid_begin|>` and runs the shared
trie-constrained beam search, so RecBole's full-ranking evaluator scores NaviGen like any other model.
`generate_instructions` writes the cid2ins reply (reasoning, target terms, instruction), validated, with one
structured retry.
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
from recbole_navigen.distributed import rank_zero_first, shard_like, whole
from recbole_navigen.identifiers.build import build_identifiers
from recbole_navigen.llm.backbone import (
    apply_lora,
    extend_vocabulary,
    load_backbone,
    load_trained_weights,
    pack_masked_rows,
    train_new_rows_only,
    unpack_masked_rows,
)
from recbole_navigen.llm.precision import autocast, check_precision
from recbole_navigen.model.instruction_data import Supervision, read_supervision
from recbole_navigen.model.navigen_tasks import (
    CID2CID_ANSWER_PREFIX,
    CID2INS_JSON_PREFIX,
    IGNORE_INDEX,
    THINK_CLOSE,
    THINK_OPEN,
    InstructionAnswer,
    cid2cid_prompt,
    cid2cid_sample,
    cid2ins_prompt,
    cid2ins_sample,
    cid2tid_sample,
    encode_for_training,
    encode_prompts,
    histories,
    parse_instruction_answer,
    render_prompt,
    task_mix,
    tid2cid_sample,
)
from recbole_navigen.teacher.jsonparse import extract_json

logger = logging.getLogger(__name__)
RL_STAGE = "rl"


class NaviGen(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        with rank_zero_first():  # several processes: one builds the caches, the others read them
            identifiers = build_identifiers(config, dataset)
            llm, self.hf_tokenizer = load_backbone(config["llm_path"], config["pretrained_cache_dir"],
                                                   identifiers.texts[1:], config["tiny_backbone"])
        self.items = identifiers.tokenizer
        self.item_texts = identifiers.texts
        self.identifiers_key = identifiers.folder.name
        self.llm_path = config["llm_path"]
        self.history_format = config["history_format"]
        self.max_length = config["max_length"]
        self.beam_size = config["beam_size"]
        self.precision = check_precision(config["precision"])
        if self.beam_size < max(config["topk"]):
            raise ValueError(f"beam_size {self.beam_size} must be at least max(topk) = {max(config['topk'])}")

        new_ids = extend_vocabulary(llm, self.hf_tokenizer, self.items.code_tokens())
        if config["init_from"]:
            llm = self._trained_backbone(llm, config["init_from"], new_ids)
        self.llm = self._trainable(llm, new_ids, config)
        self.register_buffer("token_table", self.items.token_id_table(self.hf_tokenizer), persistent=False)
        self.begin_id, self.end_id = self.items.begin_id(self.hf_tokenizer), self.items.end_id(self.hf_tokenizer)
        self.trie = self.items.trie

        self.instruction_max_new_tokens = config["instruction_max_new_tokens"]
        self.supervision = self._supervision(config["supervision_path"], config["cid2ins_min_fitness"],
                                             config["cid2ins_supervision"])
        self.task_ratios = self._task_ratios(config["task_ratios"], self.supervision, config["stage"])
        self.tid2cid_items = torch.tensor([i for i in range(1, self.items.n_items) if self.items.tid(i)])
        self.generator = torch.Generator().manual_seed(config["seed"])
        self.task_counts: Counter[str] = Counter()
        self.trained_tokens = 0  # tokens of the chats trained on so far, padding excluded
        self.rl_objective = None
        if config["stage"] == RL_STAGE:
            from recbole_navigen.rl.objective import GRPOObjective

            self.rl_objective = GRPOObjective(config)
        # FSDP (distributed.py) all-gathers the weights in every forward call, so every rank must make as many:
        # one padded batch per training step then, not one per task (which the ranks' batches draw differently).
        self.group_by_task = config["dist_strategy"] != "fsdp"
        if not self.group_by_task and self.rl_objective is not None:
            raise ValueError("dist_strategy: fsdp trains the SFT stages (1, 2); the rl stage's sampled rollouts "
                             "run differently on each rank: use dist_strategy: ddp")

    def _trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {name: parameter for name, parameter in self.named_parameters() if parameter.requires_grad}

    def state_dict(self, *args, **kwargs):
        """Only the weights training changes (adapters, the code tokens' embedding rows, the head): RecBole's
        checkpoints then hold no copy of the frozen backbone, which `llm_path` rebuilds, and of a row-masked
        embedding only the new tokens' rows."""
        trainable = self._trainable_parameters()
        full = super().state_dict(*args, **kwargs)
        # Under FSDP each value is a shard: gathered whole (every rank calls this), as one process saves it.
        state = type(full)((key, whole(value)) for key, value in full.items() if key in trainable)
        pack_masked_rows(trainable, state)
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        trainable = self._trainable_parameters()
        missing = sorted(set(trainable) - set(state_dict))
        if strict and missing:
            raise RuntimeError(f"NaviGen checkpoint lacks trained weights {missing[:5]} (stage or adapters differ?)")
        # E.g. a head that stage 1 untied, loaded into a model that still ties it to the embedding: the head
        # would overwrite the embedding. The stage lineage (`init_from`) rebuilds the model the weights fit.
        extra = sorted(set(state_dict) - set(trainable))
        if strict and extra:
            raise RuntimeError(f"NaviGen checkpoint holds weights this model does not train: {extra[:5]}; build "
                               "the model with the checkpoint's own configuration and init_from (load_trained_navigen)")
        state_dict = dict(state_dict)
        unpack_masked_rows(trainable, state_dict)
        # Under FSDP each rank keeps its own shard of every whole value.
        state_dict = {key: shard_like(value, trainable.get(key)) for key, value in state_dict.items()}
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def _read_checkpoint(self, checkpoint: str) -> tuple[dict, object]:
        """(weights, config) of a NaviGen checkpoint written by RecBole's trainer, checked against this
        model's identifiers."""
        # Our own RecBole checkpoint: it pickles the Config beside the weights, which the safe loader refuses.
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)  # load_state_dict places it
        self.load_other_parameter(state.get("other_parameter"))
        return state["state_dict"], state["config"]

    def _trained_backbone(self, llm, checkpoint: str, new_ids: torch.Tensor):
        """`llm` as the stage that wrote `checkpoint` left it: that stage's own starting point first (its
        `init_from`, recursively), then its weights; adapters it trained are merged in, so the next stage
        starts from a plain model (and the RL stage's reference policy is exactly this one)."""
        weights, saved = self._read_checkpoint(checkpoint)
        if saved["init_from"]:
            llm = self._trained_backbone(llm, saved["init_from"], new_ids)
        weights = {key.removeprefix("llm."): value for key, value in weights.items()}
        if not self._uses_lora(saved):
            load_trained_weights(llm, weights, new_ids)
            return llm
        rl = saved["stage"] == RL_STAGE
        prefix = "rl_" if rl else ""
        adapted = apply_lora(llm, None if rl else new_ids, saved[f"{prefix}lora_r"], saved[f"{prefix}lora_alpha"],
                             saved[f"{prefix}lora_dropout"], saved[f"{prefix}lora_target_modules"])
        parameters = dict(adapted.named_parameters())
        unpack_masked_rows(parameters, weights)
        unexpected = adapted.load_state_dict(weights, strict=False).unexpected_keys
        if unexpected:
            raise KeyError(f"{checkpoint}: weights for parameters the model does not have: {unexpected[:5]}")
        return adapted.merge_and_unload()

    @staticmethod
    def _uses_lora(config) -> bool:
        return config["stage"] == RL_STAGE or (config["stage"] == 2 and config["finetune"] == "lora")

    def load_checkpoint(self, checkpoint: str) -> None:
        """Restore the trained weights of a checkpoint this model's configuration wrote."""
        self.load_state_dict(self._read_checkpoint(checkpoint)[0])

    def other_parameter(self) -> dict:
        """Saved beside the weights by RecBole: which identifiers and backbone they belong to."""
        return {"identifiers": self.identifiers_key, "llm_path": self.llm_path}

    def load_other_parameter(self, para: dict | None) -> None:
        if para and para.get("identifiers") != self.identifiers_key:
            raise RuntimeError(f"checkpoint made with identifiers {para.get('identifiers')}, "
                               f"this model uses {self.identifiers_key}: item codes would not match")

    @staticmethod
    def _trainable(llm, new_ids: torch.Tensor, config):
        """Stage 1: new rows + head only. Stage 2: LoRA adapters + new rows, or every weight. RL: a fresh
        LoRA adapter only (switched off, it gives the reference policy)."""
        if config["stage"] == 1:
            train_new_rows_only(llm, new_ids, config["stage1_head"])
            return llm
        if config["stage"] == RL_STAGE:
            return apply_lora(llm, None, config["rl_lora_r"], config["rl_lora_alpha"], config["rl_lora_dropout"],
                              config["rl_lora_target_modules"])
        if config["stage"] != 2:
            raise ValueError(f"stage must be 1, 2 or {RL_STAGE!r}, not {config['stage']!r}")
        if config["finetune"] == "lora":
            return apply_lora(llm, new_ids, config["lora_r"], config["lora_alpha"], config["lora_dropout"],
                              config["lora_target_modules"])
        if config["finetune"] != "full":
            raise ValueError(f"finetune must be lora or full, not {config['finetune']!r}")
        return llm

    def _supervision(self, path: str | None, min_fitness: float | None, mode: str) -> Supervision | None:
        """The cid2ins examples of `path` whose whole chat fits `max_length` (the others are counted, logged)."""
        if not path:
            return None
        supervision = read_supervision(path, self.items, self.max_seq_length, min_fitness, mode)
        fitting = [example for example in supervision.examples
                   if self._fits(cid2ins_sample(self.items, example.history, example.target, example.reasoning,
                                                example.instruction, self.history_format))]
        dropped = len(supervision.examples) - len(fitting)
        if dropped:
            logger.info(f"NaviGen: {dropped} cid2ins examples left out, longer than max_length={self.max_length}")
        skipped = {**supervision.skipped, **({"over max_length": dropped} if dropped else {})}
        return replace(supervision, examples=fitting, skipped=skipped)

    def _fits(self, sample) -> bool:
        text = render_prompt(sample, self.hf_tokenizer) + sample.answer + self.hf_tokenizer.eos_token
        return len(self.hf_tokenizer(text, add_special_tokens=False)["input_ids"]) <= self.max_length

    @staticmethod
    def _task_ratios(ratios: dict, supervision: Supervision | None, stage: int) -> dict:
        """`task_ratios` without cid2ins where it cannot or should not train: no usable supervision, or stage 1
        (the cold start learns the identifiers: mapping tasks and cid2cid, as in the release)."""
        ratios = dict(ratios)
        if ratios.get("cid2ins"):
            reason = None
            if stage == 1:
                reason = "stage 1 trains the mapping tasks and cid2cid; instructions come in stage 2"
            elif supervision is None:
                reason = "no instruction supervision is configured"
            elif not supervision.examples:
                reason = f"{supervision.path} holds no usable example"
            if reason:
                logger.info(f"NaviGen: cid2ins skipped, {reason}")
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
            elif task == "cid2ins":  # the supervised examples, drawn at random (their own users and targets)
                example = self.supervision.examples[self._draw(len(self.supervision.examples))]
                samples.append(cid2ins_sample(self.items, example.history, example.target, example.reasoning,
                                              example.instruction, self.history_format))
            else:  # tid2cid, over items that have terms (an empty TID names no item)
                samples.append(tid2cid_sample(self.items, int(self.tid2cid_items[self._draw(len(self.tid2cid_items))])))
        return samples

    def _draw(self, count: int) -> int:
        return int(torch.randint(count, (1,), generator=self.generator))

    def training_batches(self, interaction) -> list[dict[str, torch.Tensor]]:
        """The batch's chats as padded token ids, attention mask and answer-only labels, on the model's device:
        one padded group per task, so that a few long cid2ins chats do not pad every short mapping chat (one
        group in all without `group_by_task`)."""
        by_task: dict[str, list] = {}
        for sample in self.samples(interaction):
            by_task.setdefault(sample.task if self.group_by_task else "", []).append(sample)
        device = self.token_table.device
        return [{key: value.to(device) for key, value in
                 encode_for_training(group, self.hf_tokenizer, self.max_length).items()} for group in by_task.values()]

    def calculate_loss(self, interaction) -> torch.Tensor:
        """The mixed SFT loss (mean over every answer token of the batch, as one padded batch would give);
        in the RL stage, the GRPO loss of rollouts on this batch's users."""
        with self._autocast():
            if self.rl_objective is not None:
                return self.rl_objective(self, interaction)
            batches = self.training_batches(interaction)
            # Tokens each group's loss averages over: labels past the first position that are not ignored.
            counts = [int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) for batch in batches]
            total = sum(counts)
            self.trained_tokens += sum(int(batch["attention_mask"].sum()) for batch in batches)
            return sum(self.llm(**batch).loss * (count / total) for batch, count in zip(batches, counts))

    def _autocast(self):
        """Mixed precision for the backbone's forward passes when `precision: bf16` (llm/precision.py)."""
        return autocast(self.precision, self.token_table.device)

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
        with self._autocast():
            stepper = CausalStepper(self.llm, batch["input_ids"].to(device), batch["attention_mask"].to(device))
            return constrained_beam_search(stepper, len(prompts), self.trie, self.token_table, self.end_id,
                                           self.beam_size, timings)

    @torch.no_grad()
    def _greedy(self, prompts: list, prefixes: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of each prompt + its answer prefix (special tokens dropped, code tokens kept)."""
        batch = encode_prompts(prompts, self.hf_tokenizer, prefixes)
        device = self.token_table.device
        with self._autocast():
            output = self.llm.generate(input_ids=batch["input_ids"].to(device),
                                       attention_mask=batch["attention_mask"].to(device),
                                       max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=self.hf_tokenizer.pad_token_id)
        return self.hf_tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    @torch.no_grad()
    def describe(self, items: list[int], max_new_tokens: int = 96) -> list[list[str] | None]:
        """The model's own TID for each item (greedy cid2tid answers); None where the answer is not the
        JSON object `{"target_tid": [...]}` it was trained to write."""
        prompts = [replace(cid2tid_sample(self.items, item), answer="") for item in items]
        terms = []
        for answer in self._greedy(prompts, [""] * len(prompts), max_new_tokens):
            try:
                parsed = extract_json(answer)
            except ValueError:
                parsed = None
            tid = parsed.get("target_tid") if isinstance(parsed, dict) else None
            terms.append(tid if isinstance(tid, list) and all(isinstance(t, str) for t in tid) else None)
        return terms

    @torch.no_grad()
    def generate_instructions(self, history: list[list[int]]) -> list[tuple[InstructionAnswer, int]]:
        """The cid2ins reply for each history (oldest first), parsed and validated, with the attempts taken.

        Attempt 1 decodes greedily after `<think>`. A reply that does not validate gets one structured retry:
        its reasoning is kept (up to `</think>`, or all of it when the block never closed), `</think>` and
        `{"target_tid":["` are forced, and the JSON is decoded again. A reply failing both keeps its error;
        nothing is filled in for it.
        """
        prompts = [cid2ins_prompt(self.items, past[-self.max_seq_length:], self.history_format) for past in history]
        budget = self.instruction_max_new_tokens
        answers = [parse_instruction_answer(THINK_OPEN + text)
                   for text in self._greedy(prompts, [THINK_OPEN] * len(prompts), budget)]
        results = [(answer, 1) for answer in answers]
        retry = [index for index, answer in enumerate(answers) if answer.error]
        if retry:
            forced = [THINK_OPEN + (answers[i].reasoning or "") + THINK_CLOSE + CID2INS_JSON_PREFIX for i in retry]
            texts = self._greedy([prompts[i] for i in retry], forced, budget)
            for index, prefix, text in zip(retry, forced, texts, strict=True):
                second = parse_instruction_answer(prefix + text)
                results[index] = (second if not second.error else replace(
                    second, error=f"{answers[index].error}; retry: {second.error}"), 2)
        return results

    @torch.no_grad()
    def full_sort_predict(self, interaction) -> torch.Tensor:
        return beams_to_scores(self.beam_search(interaction), self.n_items)
