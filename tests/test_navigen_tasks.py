"""NaviGen task samples and their encoding, on a hand-made item tokenizer and a small byte-level BPE."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from recbole_navigen.identifiers.item_tokenizer import ItemTokenizer
from recbole_navigen.model.navigen_tasks import (
    CID2CID_ANSWER_PREFIX,
    IGNORE_INDEX,
    InstructionAnswer,
    Sample,
    THINK_OPEN,
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

CODES = np.array([[-1, -1, -1], [0, 1, 2], [0, 1, 3], [1, 0, 0], [2, 3, 1], [3, 2, 0], [3, 3, 3]])
TERMS = [[], ["trail shoes", "mesh"], ["chef knife", "steel"], ["headphones"], ["board game", "family", "dice"],
         ["café table", "oak"], []]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def items() -> ItemTokenizer:
    return ItemTokenizer(["[PAD]"] + [f"i{n}" for n in range(1, 7)], CODES, TERMS, [4, 4, 4])


@pytest.fixture(scope="module")
def hf_tokenizer(items):
    """A byte-level BPE trained here, with a ChatML template and the item code tokens registered."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    sentences = [
        "You are an assistant that maps item identifiers and recommends the next item.",
        'Reply with JSON only: {"target_cid":"x"} or {"target_tid":["a","b"]}',
        "The user interacted with trail shoes, a chef knife, headphones and a board game.",
        "system user assistant history predict describe terms",
    ]
    special = ["<|im_start|>", "<|im_end|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(sentences, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|pad|>"
    )
    tokenizer.chat_template = CHATML
    items.add_to_tokenizer(tokenizer)
    return tokenizer


def answer_of(sample: Sample) -> dict:
    return json.loads(sample.answer)


def all_samples(items: ItemTokenizer) -> list[Sample]:
    return [
        cid2tid_sample(items, 4),
        tid2cid_sample(items, 5),
        cid2cid_sample(items, [1, 2, 3], 4),
        cid2cid_sample(items, [5, 1], 2, history_format="cid+tid"),
        cid2ins_sample(items, [1, 3], 4, "They like games.", "A cosy family game night."),
    ]


# ----- samples -----


def test_mapping_answers(items):
    cid2tid, tid2cid = cid2tid_sample(items, 4), tid2cid_sample(items, 5)
    assert answer_of(cid2tid) == {"target_tid": ["board game", "family", "dice"]}
    assert answer_of(tid2cid) == {"target_cid": items.cid(5)}
    assert "café" in tid2cid.messages[1]["content"]  # non-ASCII kept as is
    assert items.cid(4) in cid2tid.messages[1]["content"]
    for sample, field in ((cid2tid, "target_tid"), (tid2cid, "target_cid")):
        assert [m["role"] for m in sample.messages] == ["system", "user"]
        assert field in sample.messages[0]["content"] and " " not in sample.answer.replace("board game", "")
    with pytest.raises(ValueError, match="no TID terms"):
        tid2cid_sample(items, 6)


def test_cid2cid_history_order_and_formats(items):
    sample = cid2cid_sample(items, [3, 1, 2], 4)
    assert answer_of(sample) == {"target_cid": items.cid(4)} and sample.answer.startswith(CID2CID_ANSWER_PREFIX)
    listed = json.loads(sample.messages[1]["content"].split("History: ")[1].splitlines()[0])
    assert listed == [items.cid(3), items.cid(1), items.cid(2)]
    both = cid2cid_sample(items, [1, 6, 2], 4, history_format="cid+tid")
    listed = json.loads(both.messages[1]["content"].split("History: ")[1].splitlines()[0])
    assert listed == [f"{items.cid(1)} (trail shoes, mesh)", items.cid(6), f"{items.cid(2)} (chef knife, steel)"]
    assert both.messages[0]["content"] != sample.messages[0]["content"]  # the system prompt says how entries read
    with pytest.raises(ValueError, match="history_format"):
        cid2cid_sample(items, [1], 2, history_format="tid")
    with pytest.raises(ValueError, match="at least one"):
        cid2cid_sample(items, [], 2)


def test_cid2ins_thinks_then_answers(items):
    sample = cid2ins_sample(items, [1, 3], 4, " They like games. ", "A cosy family game night.")
    think, answer = sample.answer.split("</think>\n\n")
    assert think == "<think>\nThey like games.\n"
    expected = {"target_tid": ["board game", "family", "dice"], "target_ins": "A cosy family game night."}
    assert json.loads(answer) == expected


def test_instruction_answers_parse_only_when_valid(items):
    sample = cid2ins_sample(items, [1, 3], 4, "They like games.", "A cosy family game night.")
    parsed = parse_instruction_answer(sample.answer)
    assert parsed == InstructionAnswer("They like games.", ["board game", "family", "dice"], "A cosy family game night.")
    assert sample.messages == cid2ins_prompt(items, [1, 3]).messages and sample.answer.startswith(THINK_OPEN)
    cases = {
        '{"target_tid":["a"],"target_ins":"b"}': "no closed <think> block",
        "<think>\nI think</think>\n\n{'target_tid': ['a']}": "not one JSON object",
        '<think>x</think>{"target_tid":["a"],"target_ins":"b","extra":1}': "exactly target_tid and target_ins",
        '<think>x</think>{"target_tid":[],"target_ins":"b"}': "non-empty list of terms",
        '<think>x</think>{"target_tid":["a", 3],"target_ins":"b"}': "non-empty list of terms",
        '<think>x</think>{"target_tid":["a"],"target_ins":"  "}': "target_ins must be non-empty",
        '<think>x</think>{"target_tid":["a"],"target_ins":"b"} and more': "not one JSON object",
    }
    for text, error in cases.items():
        answer = parse_instruction_answer(text)
        assert error in answer.error and answer.instruction is None, text
    assert parse_instruction_answer("<think>cut off mid-sentence").reasoning == "cut off mid-sentence"


def test_histories_drop_padding():
    item_seq = torch.tensor([[4, 2, 7, 0, 0], [1, 0, 0, 0, 0], [3, 5, 6, 8, 9]])
    assert histories(item_seq, torch.tensor([3, 1, 5])) == [[4, 2, 7], [1], [3, 5, 6, 8, 9]]


# ----- encoding -----


def test_training_labels_are_the_answer_and_eos(items, hf_tokenizer):
    samples = all_samples(items)
    batch = encode_for_training(samples, hf_tokenizer, max_length=512)
    eos = hf_tokenizer.eos_token
    for row, sample in enumerate(samples):
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()  # right padding
        assert (labels[length:] == IGNORE_INDEX).all() and (ids[length:] == hf_tokenizer.pad_token_id).all()
        text = render_prompt(sample, hf_tokenizer) + sample.answer + eos
        assert ids[:length].tolist() == hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        answer = labels != IGNORE_INDEX
        first = int(answer.nonzero()[0])
        assert answer[first:length].all() and not answer[:first].any()  # prompt tokens carry no loss
        assert (labels[answer] == ids[answer]).all()
        assert hf_tokenizer.decode(labels[answer]) == sample.answer + eos
    assert batch["attention_mask"].sum(1).max() == batch["input_ids"].shape[1]  # padded to the longest only


def test_left_truncation_keeps_the_answer(items, hf_tokenizer):
    sample = cid2cid_sample(items, [1, 2, 3, 5, 6, 1, 2], 4)
    full = encode_for_training([sample], hf_tokenizer, max_length=1024)
    n_answer = int((full["labels"] != IGNORE_INDEX).sum())
    cut = encode_for_training([sample], hf_tokenizer, max_length=n_answer + 5)
    assert cut["input_ids"].shape[1] == n_answer + 5
    assert cut["input_ids"][0].tolist() == full["input_ids"][0, -(n_answer + 5):].tolist()
    assert hf_tokenizer.decode(cut["labels"][0][cut["labels"][0] != IGNORE_INDEX]) == sample.answer + "<|im_end|>"
    with pytest.raises(ValueError, match="cid2cid"):
        encode_for_training([sample], hf_tokenizer, max_length=n_answer - 1)


def test_prompts_are_the_training_prefix(items, hf_tokenizer):
    samples = [cid2cid_sample(items, [1, 2, 3, 5], 4), cid2cid_sample(items, [6], 2, history_format="cid+tid")]
    prompts = encode_prompts(samples, hf_tokenizer, CID2CID_ANSWER_PREFIX)
    training = encode_for_training(samples, hf_tokenizer, max_length=512)
    prefix_ids = hf_tokenizer(CID2CID_ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
    assert prefix_ids[-1] == items.begin_id(hf_tokenizer)
    for row in range(len(samples)):
        mask = prompts["attention_mask"][row]
        length = int(mask.sum())
        assert not mask[:-length].any() and mask[-length:].all()  # left padding
        assert (prompts["input_ids"][row, :-length] == hf_tokenizer.pad_token_id).all()
        ids = prompts["input_ids"][row, -length:].tolist()
        assert ids[-len(prefix_ids):] == prefix_ids
        assert training["input_ids"][row, :length].tolist() == ids


def test_prompts_take_one_prefix_per_sample(items, hf_tokenizer):
    samples = [cid2ins_prompt(items, [1]), cid2ins_prompt(items, [2, 3])]
    batch = encode_prompts(samples, hf_tokenizer, [THINK_OPEN, THINK_OPEN + "I like"])
    texts = hf_tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=False)
    assert texts[0].endswith("assistant\n<think>\n") and texts[1].endswith("assistant\n<think>\nI like")
    with pytest.raises(ValueError, match="1 answer prefixes for 2 prompts"):
        encode_prompts(samples, hf_tokenizer, [THINK_OPEN])


def test_a_template_splitting_a_token_is_refused(items, hf_tokenizer):
    spaced = hf_tokenizer.chat_template.replace("assistant\\n", "assistant ")
    sample = cid2tid_sample(items, 1)
    hf_tokenizer.chat_template = spaced
    try:
        with pytest.raises(ValueError, match="token boundary"):
            encode_for_training([sample], hf_tokenizer, max_length=512)
    finally:
        hf_tokenizer.chat_template = CHATML


# ----- task mix -----


def test_task_mix_follows_ratios_and_seed():
    ratios = {"cid2tid": 1.0, "tid2cid": 1.0, "cid2cid": 2.0, "cid2ins": 0.0}
    drawn = task_mix(ratios, 8000, torch.Generator().manual_seed(0))
    counts = Counter(drawn)
    assert "cid2ins" not in counts and len(drawn) == 8000
    for task, share in (("cid2tid", 0.25), ("tid2cid", 0.25), ("cid2cid", 0.5)):
        assert abs(counts[task] / 8000 - share) < 0.03
    seeded = [task_mix(ratios, 50, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert seeded[0] == seeded[1]
    with pytest.raises(ValueError, match="known: .*cid2tid"):
        task_mix({"cid2tid": 1.0, "tid2tid": 1.0}, 4, torch.Generator())
    with pytest.raises(ValueError, match="positive sum"):
        task_mix({"cid2tid": 0.0}, 4, torch.Generator())
