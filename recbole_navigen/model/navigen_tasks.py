"""NaviGen's training tasks as chat samples, and their encoding for a causal LM.

Owns: the wording of every task (system and user messages), the compact-JSON answers, the history helper
that turns RecBole's padded `item_seq` into item lists, the task mix drawn per batch, and the two encodings:
training (prompt + answer in one tokenized string, loss on the answer only) and prompts for constrained
decoding (the same string, cut at an answer prefix). The tasks:

- `cid2tid`: an item's CID -> `{"target_tid":[terms]}`;
- `tid2cid`: an item's TID -> `{"target_cid":"<CID>"}`;
- `cid2cid`: the user's history (oldest first) -> `{"target_cid":"<CID>"}` of the next item;
- `cid2ins`: the user's history -> a `<think>` block, then `{"target_tid":[...],"target_ins":"..."}`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

import torch

from recbole_navigen.identifiers.item_tokenizer import ItemTokenizer

TASKS = ("cid2tid", "tid2cid", "cid2cid", "cid2ins")
HISTORY_FORMATS = ("cid", "cid+tid")
IGNORE_INDEX = -100  # label of tokens without loss (prompt, padding), as torch's cross entropy expects

_JSON_ONLY = "Reply with JSON only."
_MAPPING_SYSTEM = (
    "You are an ID mapping assistant for a catalogue of items. Each item has a collaborative ID (CID), "
    "a short sequence of code tokens, and a textual ID (TID), a list of terms describing it. "
    "Convert the identifier you are given into the other one. "
    "Your reply must be a single JSON object whose only field is {field}."
)
_RECOMMEND_SYSTEM = (
    "You are a personalised recommendation assistant. You see the items a user interacted with, "
    "oldest first, {entries}. Predict the CID of the item the user interacts with next. "
    "Your reply must be a single JSON object whose only field is target_cid."
)
_INSTRUCTION_SYSTEM = (
    "You are a personalised recommendation and content-instruction assistant. You see the items a user "
    "interacted with, oldest first, {entries}. Describe the item the user wants next by its TID terms and "
    "write an instruction for generating content that suits the user. Reason step by step inside "
    "<think></think> first. After that, your reply must be a single JSON object whose only fields are "
    "target_tid and target_ins."
)
_HISTORY_ENTRIES = {
    "cid": "each written as its CID",
    "cid+tid": "each written as its CID followed by its TID terms in parentheses",
}


@dataclass(frozen=True)
class Sample:
    """One chat sample: the prompt messages and the assistant's reply."""

    task: str
    messages: list[dict[str, str]]  # system + user
    answer: str  # the assistant's text: compact JSON (after a <think> block for cid2ins)


def _json(value) -> str:
    """Compact JSON, non-ASCII kept as is: the form of every answer and of lists inside prompts."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# Where a cid2cid answer's code begins: decoding from here on is constrained to the catalogue's CIDs.
CID2CID_ANSWER_PREFIX = '{"target_cid":"' + ItemTokenizer.BEGIN
# A cid2ins reply: `<think>` reasoning, then the JSON answer. Decoding starts after THINK_OPEN; a retry
# forces THINK_CLOSE + CID2INS_JSON_PREFIX after the reasoning it kept.
THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n\n"
CID2INS_JSON_PREFIX = '{"target_tid":["'
_THINK_BLOCK = re.compile(r"\s*<think>(.*?)</think>(.*)", re.DOTALL)
_THINK_START = re.compile(r"\s*<think>(.*)", re.DOTALL)


def _chat(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# ----- samples -----


def cid2tid_sample(tokenizer: ItemTokenizer, item: int) -> Sample:
    """Map item `item`'s CID to its TID terms."""
    user = f"Give the TID of this item.\nCID: {tokenizer.cid(item)}\n{_JSON_ONLY}"
    messages = _chat(_MAPPING_SYSTEM.format(field="target_tid"), user)
    return Sample("cid2tid", messages, _json({"target_tid": tokenizer.tid(item)}))


def tid2cid_sample(tokenizer: ItemTokenizer, item: int) -> Sample:
    """Map item `item`'s TID terms to its CID; an item without terms is an error (its TID names nothing)."""
    terms = tokenizer.tid(item)
    if not terms:
        raise ValueError(f"item {item} has no TID terms: tid2cid needs items with terms")
    user = f"Give the CID of this item.\nTID: {_json(terms)}\n{_JSON_ONLY}"
    messages = _chat(_MAPPING_SYSTEM.format(field="target_cid"), user)
    return Sample("tid2cid", messages, _json({"target_cid": tokenizer.cid(item)}))


def cid2cid_prompt(tokenizer: ItemTokenizer, history: list[int], history_format: str = "cid") -> Sample:
    """The cid2cid chat for `history` (oldest first) with no answer yet: what prediction decodes from."""
    history_text = _history(tokenizer, history, history_format)
    user = f"Predict the CID of the user's next item.\nHistory: {history_text}\n{_JSON_ONLY}"
    return Sample("cid2cid", _chat(_RECOMMEND_SYSTEM.format(entries=_HISTORY_ENTRIES[history_format]), user), "")


def cid2cid_sample(
    tokenizer: ItemTokenizer, history: list[int], target: int, history_format: str = "cid"
) -> Sample:
    """Predict the CID of `target` from `history` (oldest first)."""
    prompt = cid2cid_prompt(tokenizer, history, history_format)
    return replace(prompt, answer=_json({"target_cid": tokenizer.cid(target)}))


def cid2ins_prompt(tokenizer: ItemTokenizer, history: list[int], history_format: str = "cid") -> Sample:
    """The cid2ins chat for `history` (oldest first) with no answer yet: what instructions decode from."""
    user = (
        "Describe the user's next item and write a content instruction for the user.\n"
        f"History: {_history(tokenizer, history, history_format)}\nThink first, then reply with JSON only."
    )
    return Sample("cid2ins", _chat(_INSTRUCTION_SYSTEM.format(entries=_HISTORY_ENTRIES[history_format]), user), "")


def cid2ins_sample(
    tokenizer: ItemTokenizer,
    history: list[int],
    target: int,
    reasoning: str,
    instruction: str,
    history_format: str = "cid",
) -> Sample:
    """From `history`, reason (given `reasoning`), then name `target`'s TID and the given `instruction`."""
    answer = _json({"target_tid": tokenizer.tid(target), "target_ins": instruction})
    return replace(cid2ins_prompt(tokenizer, history, history_format), answer=think_answer(reasoning, answer))


def think_answer(reasoning: str, answer_json: str) -> str:
    """The cid2ins reply: the reasoning inside `<think>`, then the JSON answer."""
    return f"{THINK_OPEN}{reasoning.strip()}{THINK_CLOSE}{answer_json}"


@dataclass(frozen=True)
class InstructionAnswer:
    """A parsed cid2ins reply; `error` says why it did not parse (the other fields are then what was found)."""

    reasoning: str | None
    target_tid: list[str] | None
    instruction: str | None
    error: str | None = None


def parse_instruction_answer(text: str) -> InstructionAnswer:
    """Validate a cid2ins reply: a closed `<think>` block, then exactly the JSON object
    `{"target_tid": [non-empty strings], "target_ins": "non-empty text"}`."""
    match = _THINK_BLOCK.match(text)
    if match is None:
        unclosed = _THINK_START.match(text)
        return InstructionAnswer(unclosed.group(1).strip() if unclosed else None, None, None, "no closed <think> block")
    reasoning, rest = match.group(1).strip(), match.group(2).strip()
    try:
        value = json.loads(rest)
    except json.JSONDecodeError as error:
        return InstructionAnswer(reasoning, None, None, f"answer is not one JSON object ({error.msg})")
    if not isinstance(value, dict) or set(value) != {"target_tid", "target_ins"}:
        keys = sorted(value) if isinstance(value, dict) else type(value).__name__
        return InstructionAnswer(reasoning, None, None, f"answer must have exactly target_tid and target_ins, got {keys}")
    terms, instruction = value["target_tid"], value["target_ins"]
    if not isinstance(terms, list) or not terms or not all(isinstance(t, str) and t.strip() for t in terms):
        return InstructionAnswer(reasoning, None, None, "target_tid must be a non-empty list of terms")
    if not isinstance(instruction, str) or not instruction.strip():
        return InstructionAnswer(reasoning, terms, None, "target_ins must be non-empty text")
    return InstructionAnswer(reasoning, terms, instruction.strip())


def _history(tokenizer: ItemTokenizer, history: list[int], history_format: str) -> str:
    """The history as a compact JSON list, one entry per item, oldest first."""
    if history_format not in HISTORY_FORMATS:
        raise ValueError(f"unknown history_format {history_format!r}; known: {list(HISTORY_FORMATS)}")
    if not history:
        raise ValueError("a history needs at least one item")
    return _json([_history_entry(tokenizer, item, history_format) for item in history])


def _history_entry(tokenizer: ItemTokenizer, item: int, history_format: str) -> str:
    """`<CID>`, or `<CID> (term, term)` so both identifiers share one token stream."""
    terms = tokenizer.tid(item) if history_format == "cid+tid" else []
    return f"{tokenizer.cid(item)} ({', '.join(terms)})" if terms else tokenizer.cid(item)


def histories(item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> list[list[int]]:
    """RecBole's `item_seq` [batch, max_len] (left-aligned, zero padded) as item lists, oldest first."""
    return [row[:length].tolist() for row, length in zip(item_seq, item_seq_len.tolist())]


def task_mix(ratios: dict[str, float], count: int, generator: torch.Generator) -> list[str]:
    """`count` task names drawn with replacement in proportion to `ratios`."""
    unknown = sorted(set(ratios) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known: {list(TASKS)}")
    names = list(ratios)
    weights = torch.tensor([float(ratios[name]) for name in names], dtype=torch.float64)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"task ratios must be non-negative with a positive sum, got {ratios}")
    draws = torch.multinomial(weights, count, replacement=True, generator=generator)
    return [names[index] for index in draws.tolist()]


# ----- encoding -----


def encode_for_training(samples: list[Sample], hf_tokenizer, max_length: int) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask` and `labels` [batch, longest]: right padded, loss on answer + eos only.

    Prompt and answer are tokenized as one string so that tokens merge exactly as they do when the model
    continues its own prompt; the answer's tokens are found by their character offsets. A sample longer than
    `max_length` loses tokens from the left of its prompt.
    """
    if hf_tokenizer.eos_token is None:
        raise ValueError("the tokenizer has no eos_token: training needs one to teach the model to stop")
    prompts = [render_prompt(sample, hf_tokenizer) for sample in samples]
    texts = [prompt + sample.answer + hf_tokenizer.eos_token for prompt, sample in zip(prompts, samples)]
    encoded = hf_tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    rows = [
        _labelled_row(sample, ids, offsets, len(prompt), max_length)
        for sample, prompt, ids, offsets in zip(samples, prompts, encoded["input_ids"], encoded["offset_mapping"])
    ]
    width = max(len(ids) for ids, _ in rows)
    pad = _pad_id(hf_tokenizer)
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
        "labels": torch.tensor([labels + [IGNORE_INDEX] * (width - len(labels)) for _, labels in rows]),
    }


def encode_prompts(samples: list[Sample], hf_tokenizer, answer_prefix: str | list[str]) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` [batch, longest] of each prompt + `answer_prefix` (one for all, or
    one per sample), left padded.

    The text is exactly what `encode_for_training` tokenizes up to `answer_prefix`; a prefix that ends on a
    token boundary of the answer (such as `CID2CID_ANSWER_PREFIX`, which ends with an added token) therefore
    gives the training tokens.
    """
    prefixes = [answer_prefix] * len(samples) if isinstance(answer_prefix, str) else answer_prefix
    if len(prefixes) != len(samples):
        raise ValueError(f"{len(prefixes)} answer prefixes for {len(samples)} prompts")
    texts = [render_prompt(sample, hf_tokenizer) + prefix for sample, prefix in zip(samples, prefixes)]
    rows = hf_tokenizer(texts, add_special_tokens=False)["input_ids"]
    width = max(len(ids) for ids in rows)
    pad = _pad_id(hf_tokenizer)
    return {
        "input_ids": torch.tensor([[pad] * (width - len(ids)) + ids for ids in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows]),
    }


def render_prompt(sample: Sample, hf_tokenizer) -> str:
    """The sample's messages through the chat template, ending with the assistant's generation prompt."""
    return hf_tokenizer.apply_chat_template(sample.messages, tokenize=False, add_generation_prompt=True)


def _labelled_row(
    sample: Sample, ids: list[int], offsets: list[tuple[int, int]], answer_start: int, max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one sample, the prompt cut from the left to fit `max_length`."""
    for start, end in offsets:
        # A token spanning the boundary would be merged differently when the model continues its prompt.
        if start < answer_start < end:
            raise ValueError(
                f"{sample.task}: the chat template's generation prompt and the answer share a token; "
                "the prompt must end on a token boundary"
            )
    is_answer = [start >= answer_start for start, _ in offsets]
    n_answer = sum(is_answer)
    if n_answer > max_length:
        raise ValueError(f"{sample.task}: the answer alone is {n_answer} tokens, over max_length={max_length}")
    labels = [token if answer else IGNORE_INDEX for token, answer in zip(ids, is_answer)]
    return ids[-max_length:], labels[-max_length:]


def _pad_id(hf_tokenizer) -> int:
    """The pad token's id; eos stands in when there is none (padding is masked and never learned)."""
    pad = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else hf_tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad with")
    return pad
