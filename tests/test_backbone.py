"""The causal-LM backbone: tiny model building and caching, vocabulary extension, stage 1 and stage 2 training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from recbole_navigen.identifiers.item_tokenizer import ItemTokenizer
from recbole_navigen.llm import backbone
from recbole_navigen.llm.backbone import (
    apply_lora,
    build_tiny_backbone,
    extend_vocabulary,
    load_backbone,
    parameter_groups,
    train_new_rows_only,
    trainable_summary,
)

TEXTS = [
    "Trail running shoes with a lightweight mesh upper and a grippy sole.",
    "A chef knife of forged steel, balanced for fine slicing.",
    "Noise cancelling headphones with a long battery life.",
    "A cooperative board game for two to four players.",
]
SETTINGS = {
    "vocab_size": 300,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "seed": 0,
}
CID = "<|cid_begin|><a_3><b_1><|cid_end|>"


def code_tokens() -> list[str]:
    """The code tokens of an item tokenizer with 8 values at level a and 4 at level b."""
    codes = np.array([[-1, -1], [3, 1], [7, 2], [0, 3]])
    return ItemTokenizer(["[PAD]", "i1", "i2", "i3"], codes, [[], [], [], []], level_sizes=[8, 4]).code_tokens()


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[bool, str]:
    """Tiny backbones with an untied (False) and a tied (True) output head."""
    root = tmp_path_factory.mktemp("backbones")
    return {tied: str(build_tiny_backbone(TEXTS, root / f"tied-{tied}", {**SETTINGS, "tie_word_embeddings": tied}))
            for tied in (False, True)}


def fresh(tiny_folders, tied: bool = False):
    """A freshly loaded (model, tokenizer) with the code tokens added, and their ids."""
    model, tokenizer = load_backbone(tiny_folders[tied], "unused-cache", [], {})
    return model, tokenizer, extend_vocabulary(model, tokenizer, code_tokens())


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def one_step(model, tokenizer, weight_decay: float = 0.0) -> None:
    """One AdamW step on a language-modelling loss over a batch holding the code tokens."""
    model.train()
    texts = [f"A chef knife {CID}", "<|cid_begin|><a_7><b_2><|cid_end|> running shoes"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=1e-2)
    model(**batch, labels=labels).loss.backward()
    optimizer.step()


def test_tiny_backbone_is_deterministic_and_cached(tmp_path, monkeypatch):
    first = build_tiny_backbone(TEXTS, tmp_path / "a", SETTINGS)
    second = build_tiny_backbone(TEXTS, tmp_path / "b", SETTINGS)
    weights_a, weights_b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
    assert not list(tmp_path.glob(".*"))  # no staging folder left behind

    model, tokenizer = load_backbone("tiny", tmp_path / "cache", TEXTS, SETTINGS)
    (cached,) = (tmp_path / "cache").glob("tiny-*")
    assert len(cached.name) == len("tiny-") + 12 and len(tokenizer) == SETTINGS["vocab_size"]
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<|pad|>" and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token is None and model.dtype == torch.float32
    messages = [{"role": "system", "content": "You recommend."}, {"role": "user", "content": "A knife?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou recommend.<|im_end|>\n<|im_start|>user\nA knife?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("<|im_start|>user")[0]) == "<|im_start|>"

    def refuse(*args):
        raise RuntimeError("rebuilt")

    monkeypatch.setattr(backbone, "build_tiny_backbone", refuse)
    again, _ = load_backbone("tiny", tmp_path / "cache", TEXTS, SETTINGS)
    assert torch.equal(again.get_input_embeddings().weight, model.get_input_embeddings().weight)
    with pytest.raises(RuntimeError, match="rebuilt"):  # other settings: another folder, built anew
        load_backbone("tiny", tmp_path / "cache", TEXTS, {**SETTINGS, "seed": 1})


@pytest.mark.parametrize("tied", [False, True])
def test_extend_vocabulary_adds_one_id_per_token_initialised_to_the_mean(tiny_folders, tied):
    model, tokenizer = load_backbone(tiny_folders[tied], "unused-cache", [], {})
    old_rows = len(tokenizer)
    old_embedding = model.get_input_embeddings().weight.detach().clone()
    old_head = model.get_output_embeddings().weight.detach().clone()
    tokens = code_tokens()
    ids = extend_vocabulary(model, tokenizer, tokens)

    assert ids.dtype == torch.long and ids.tolist() == list(range(old_rows, old_rows + len(tokens)))
    assert all(tokenizer.encode(token, add_special_tokens=False) == [i] for token, i in zip(tokens, ids.tolist()))
    vocab = tokenizer.get_vocab()
    assert tokenizer.encode(CID, add_special_tokens=False) == [vocab[t] for t in ("<|cid_begin|>", "<a_3>", "<b_1>",
                                                                                    "<|cid_end|>")]
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embedding.shape[0] == len(tokenizer) == old_rows + len(tokens)
    assert torch.equal(embedding[:old_rows], old_embedding)
    assert torch.allclose(embedding[old_rows:], old_embedding.mean(dim=0).expand(len(tokens), -1))
    assert (head is embedding) == tied
    assert torch.allclose(head[old_rows:], old_head.mean(dim=0).expand(len(tokens), -1))

    trained = embedding.detach().clone()
    with torch.no_grad():
        embedding[ids] += 1.0  # as after training: a second call must keep these rows
        trained[ids] += 1.0
    assert torch.equal(extend_vocabulary(model, tokenizer, tokens), ids)
    assert len(tokenizer) == model.get_input_embeddings().weight.shape[0] == old_rows + len(tokens)
    assert torch.equal(model.get_input_embeddings().weight, trained)


@pytest.mark.parametrize(("train_head", "tied"), [("full", False), ("full", True), ("rows", False), ("rows", True)])
def test_stage1_trains_only_the_new_rows_and_the_head(tiny_folders, train_head, tied):
    model, tokenizer, ids = fresh(tiny_folders, tied)
    handles = train_new_rows_only(model, ids, train_head)
    assert len(handles) == (2 if train_head == "rows" and not tied else 1)
    assert model.config.tie_word_embeddings == (tied and train_head == "rows")
    before = snapshot(model)
    one_step(model, tokenizer, weight_decay=0.1)  # parameter_groups: no decay on the masked rows
    after = snapshot(model)

    new = torch.zeros(len(tokenizer), dtype=torch.bool)
    new[ids] = True
    embedding = "model.embed_tokens.weight"
    assert torch.equal(after[embedding][~new], before[embedding][~new])  # bit-identical
    assert not torch.equal(after[embedding][new], before[embedding][new])
    for name in before:
        if name.startswith("model.layers.") or name == "model.norm.weight":
            assert torch.equal(after[name], before[name]), name
    head = "lm_head.weight"
    if tied and train_head == "rows":
        assert head not in after  # shared with the embedding, checked above
    else:
        assert not torch.equal(after[head][new], before[head][new])
        assert torch.equal(after[head][~new], before[head][~new]) == (train_head == "rows")
        assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight

    summary = trainable_summary(model)
    rows = len(ids) * SETTINGS["hidden_size"]
    head_size = 0 if train_head == "rows" else len(tokenizer) * SETTINGS["hidden_size"]
    expected = rows * (1 + (train_head == "rows" and not tied)) + head_size
    assert summary["trainable"] == expected and summary["share"] == pytest.approx(expected / summary["total"])


def test_adamw_weight_decay_would_move_masked_rows_without_parameter_groups(tiny_folders):
    model, tokenizer, ids = fresh(tiny_folders)
    train_new_rows_only(model, ids, "rows")
    before = model.get_input_embeddings().weight.detach().clone()
    params = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    batch = tokenizer([CID], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    assert not torch.equal(model.get_input_embeddings().weight[: ids[0]], before[: ids[0]])


@pytest.mark.parametrize("tied", [False, True])
def test_stage2_trains_lora_and_the_new_rows_only(tiny_folders, tied):
    model, tokenizer, ids = fresh(tiny_folders, tied)
    plain = tokenizer(["A chef knife with a sole.", "Headphones for board game players"], return_tensors="pt",
                      padding=True)
    n_old = int(ids[0])
    with torch.no_grad():
        base_logits = model(**plain).logits
    peft_model = apply_lora(model, ids, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    before = snapshot(peft_model)
    one_step(peft_model, tokenizer, weight_decay=0.1)
    after = snapshot(peft_model)

    new = torch.zeros(len(tokenizer), dtype=torch.bool)
    new[ids] = True
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    lora_b = {name for name in before if "lora_B" in name}
    embedding = next(name for name in before if name.endswith("embed_tokens.weight"))
    heads = [name for name in before if name.endswith("lm_head.weight")]
    assert lora_b and lora_b <= changed  # lora_A gets no gradient at the first step: B starts at zero
    assert changed <= {name for name in before if "lora_" in name} | {embedding, *heads}
    for name in [embedding, *heads]:
        assert torch.equal(after[name][~new], before[name][~new]), name
        assert not torch.equal(after[name][new], before[name][new]), name
    assert len(heads) == (0 if tied else 1)

    peft_model.eval()
    with torch.no_grad(), peft_model.disable_adapter():
        disabled = peft_model(**plain).logits
    with torch.no_grad():
        adapted = peft_model(**plain).logits
    assert torch.allclose(disabled[..., :n_old], base_logits[..., :n_old], atol=1e-6)
    assert not torch.allclose(adapted[..., :n_old], base_logits[..., :n_old], atol=1e-6)
    assert 0 < trainable_summary(peft_model)["share"] < 0.5


def test_load_backbone_names_a_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder at .*missing-model"):
        load_backbone(str(tmp_path / "missing-model"), tmp_path / "cache", [], {})
    with pytest.raises(FileNotFoundError, match="no model folder"):
        load_backbone("./models/missing-model", tmp_path / "cache", [], {})


def test_load_backbone_requires_a_chat_template(tiny_folders, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "no-template"
    model, tokenizer = load_backbone(tiny_folders[False], "unused-cache", [], {})
    tokenizer.chat_template = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    assert not AutoTokenizer.from_pretrained(folder).chat_template
    with pytest.raises(ValueError, match="no-template.*no chat template"):
        load_backbone(str(folder), tmp_path / "cache", [], {})
