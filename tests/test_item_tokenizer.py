"""Item tokenizer and prefix trie: checked against a brute-force reference, a real HF tokenizer and disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbole_navigen.identifiers.item_tokenizer import ItemTokenizer
from recbole_navigen.identifiers.trie import PrefixTrie

# Items 1 and 2 share their first two levels; row 0 is RecBole's padding item.
HAND_CODES = np.array(
    [[-1, -1, -1], [0, 1, 2], [0, 1, 3], [0, 2, 0], [1, 0, 0], [2, 3, 1], [2, 0, 4], [3, 3, 3]], dtype=np.int64
)
HAND_SIZES = [4, 4, 5]


def hand_tokenizer() -> ItemTokenizer:
    item_ids = ["[PAD]"] + [f"item{i}" for i in range(1, len(HAND_CODES))]
    terms = [[]] + [[f"term {i}", "shared"] for i in range(1, len(HAND_CODES))]
    return ItemTokenizer(item_ids, HAND_CODES, terms, HAND_SIZES)


def random_codes(n_items: int = 2000, sizes: tuple[int, ...] = (16, 16, 16, 4), seed: int = 0) -> np.ndarray:
    """`n_items` unique random codes behind a padding row."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(int(np.prod(sizes)), size=n_items, replace=False)
    codes = np.stack(np.unravel_index(flat, sizes), axis=1).astype(np.int64)
    return np.concatenate([np.full((1, len(sizes)), -1), codes])


def reference_allowed(codes: np.ndarray, prefix: tuple[int, ...], k_max: int) -> list[bool]:
    """Brute force: which next values (and end) keep `prefix` a prefix of some item code."""
    row = [False] * (k_max + 1)
    items = [tuple(code) for code in codes.tolist() if code[0] >= 0]
    for code in items:
        if code[: len(prefix)] == prefix and len(prefix) < len(code):
            row[code[len(prefix)]] = True
    row[k_max] = prefix in items
    return row


def sample_prefixes(codes: np.ndarray, sizes: list[int], d: int, rng: np.random.Generator) -> np.ndarray:
    """Prefixes of depth d: real ones, random in-range ones (often absent) and out-of-range ones."""
    real = codes[rng.integers(1, len(codes), size=40), :d]
    in_range = np.stack([rng.integers(0, size, size=40) for size in sizes[:d]], axis=1) if d else real[:0]
    out_of_range = real[:10].copy()
    if d:
        out_of_range[:5, rng.integers(0, d)] = -1
        out_of_range[5:, d - 1] = sizes[d - 1] + rng.integers(0, 3, size=5)
    return np.concatenate([real, in_range, out_of_range])


@pytest.mark.parametrize(
    "codes, sizes", [(HAND_CODES, HAND_SIZES), (random_codes(), [16, 16, 16, 4])], ids=["hand", "random"]
)
def test_allowed_matches_brute_force(codes, sizes):
    trie = PrefixTrie(torch.from_numpy(codes), sizes)
    assert trie.depth == len(sizes) and trie.level_sizes == sizes
    rng = np.random.default_rng(1)
    for d in range(trie.depth + 1):
        prefixes = sample_prefixes(codes, sizes, d, rng)
        got = trie.allowed(torch.from_numpy(prefixes))
        expected = [reference_allowed(codes, tuple(p), trie.k_max) for p in prefixes.tolist()]
        assert got.tolist() == expected, f"depth {d}"
        if d == trie.depth:  # at full depth only "end" can be allowed
            assert not got[:, : trie.k_max].any()


def test_hand_trie_details():
    trie = PrefixTrie(torch.from_numpy(HAND_CODES))
    assert trie.level_sizes == [4, 4, 5] and trie.k_max == 5
    assert trie.allowed(torch.empty(1, 0, dtype=torch.long))[0].nonzero().squeeze(1).tolist() == [0, 1, 2, 3]
    assert trie.allowed(torch.tensor([[0, 1]]))[0].nonzero().squeeze(1).tolist() == [2, 3]
    assert not trie.allowed(torch.tensor([[3, 0], [9, 9], [-1, 1]])).any()
    assert trie.allowed(torch.tensor([[2, 0, 4]]))[0].tolist() == [False] * 5 + [True]
    with pytest.raises(ValueError):
        trie.allowed(torch.zeros(1, 4, dtype=torch.long))


def test_greedy_walks_end_at_items():
    codes = random_codes()
    trie = PrefixTrie(torch.from_numpy(codes), [16, 16, 16, 4])
    generator = torch.Generator().manual_seed(0)
    prefixes = torch.empty(512, 0, dtype=torch.long)
    for _ in range(trie.depth):
        mask = trie.allowed(prefixes)[:, : trie.k_max]
        assert mask.any(dim=1).all(), "every valid prefix must continue"
        step = torch.multinomial(mask.float(), 1, generator=generator)
        prefixes = torch.cat([prefixes, step], dim=1)
    assert trie.allowed(prefixes)[:, trie.k_max].all()
    items = trie.item_of(prefixes)
    assert (items > 0).all()
    assert torch.equal(torch.from_numpy(codes)[items], prefixes)


def test_item_of():
    codes = random_codes()
    trie = PrefixTrie(torch.from_numpy(codes), [16, 16, 16, 4])
    assert torch.equal(trie.item_of(torch.from_numpy(codes[1:])), torch.arange(1, len(codes)))
    present = {tuple(code) for code in codes.tolist()}
    absent = next(code for code in np.ndindex(16, 16, 16, 4) if code not in present)
    queries = torch.tensor([absent, [-1, -1, -1, -1], [16, 0, 0, 0], list(codes[5])])
    assert trie.item_of(queries).tolist() == [-1, -1, -1, 5]


def test_allowed_is_one_batched_call():
    codes = random_codes()
    trie = PrefixTrie(torch.from_numpy(codes), [16, 16, 16, 4])
    prefixes = torch.from_numpy(codes[np.random.default_rng(2).integers(1, len(codes), size=4096), :2])
    mask = trie.allowed(prefixes)
    assert mask.shape == (4096, trie.k_max + 1) and mask.any(dim=1).all()


def test_cid_round_trip_and_lookups():
    tokenizer = hand_tokenizer()
    assert tokenizer.cid(6) == "<|cid_begin|><a_2><b_0><c_4><|cid_end|>"
    assert tokenizer.code(6) == (2, 0, 4) and tokenizer.tid(6) == ["term 6", "shared"]
    for index in range(1, tokenizer.n_items):
        assert tokenizer.parse_cid(tokenizer.cid(index)) == tuple(HAND_CODES[index])
        assert tokenizer.item_of_cid(tokenizer.cid(index)) == index
        assert tokenizer.index_of_item(f"item{index}") == index
    assert tokenizer.item_of_cid("<|cid_begin|><a_3><b_0><c_0><|cid_end|>") is None  # well formed, no item
    assert tokenizer.parse_cid(" <|cid_begin|> <a_3> <b_0> <c_0> <|cid_end|>\n") == (3, 0, 0)
    with pytest.raises(KeyError, match="nope"):
        tokenizer.index_of_item("nope")
    with pytest.raises(IndexError):
        tokenizer.cid(0)
    assert tokenizer.codes_tensor[0].tolist() == [-1, -1, -1] and tokenizer.trie is tokenizer.trie


@pytest.mark.parametrize(
    "text",
    [
        "<|cid_begin|><a_0><b_1><c_2>",  # missing end
        "<a_0><b_1><c_2><|cid_end|>",  # missing begin
        "<|cid_begin|><a_0><c_1><b_2><|cid_end|>",  # wrong level letter
        "<|cid_begin|><a_0><b_1><c_5><|cid_end|>",  # value out of range
        "<|cid_begin|><a_0><b_1><c_2><d_0><|cid_end|>",  # extra level
        "<|cid_begin|><a_0><b_1><|cid_end|>",  # missing level
        "<|cid_begin|><a_0><b_01><c_2><|cid_end|>",  # not the canonical token
        "<|cid_begin|><a_0><b_1><c_2><|cid_end|><|cid_begin|><a_0><b_1><c_2><|cid_end|>",  # two CIDs
        "item <|cid_begin|><a_0><b_1><c_2><|cid_end|>",  # extra text
        "",
    ],
)
def test_malformed_cid_parses_to_none(text):
    tokenizer = hand_tokenizer()
    assert tokenizer.parse_cid(text) is None and tokenizer.item_of_cid(text) is None


def test_code_tokens():
    tokens = hand_tokenizer().code_tokens()
    assert tokens[:2] == [ItemTokenizer.BEGIN, ItemTokenizer.END]
    assert len(tokens) == len(set(tokens)) == 2 + sum(HAND_SIZES)
    assert "<c_4>" in tokens and "<c_5>" not in tokens and "<a_3>" in tokens


def tiny_hf_tokenizer():
    """A byte-level BPE tokenizer trained offline on a few sentences, as an HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    sentences = ["a cheap phone case <with> brackets_and 12 numbers", "the quick brown fox jumps over the lazy dog"]
    backend.train_from_iterator(sentences * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_add_to_tokenizer_makes_single_tokens():
    tokenizer, hf = hand_tokenizer(), tiny_hf_tokenizer()
    with pytest.raises(KeyError, match="add_to_tokenizer"):
        tokenizer.token_id_table(hf)
    assert tokenizer.add_to_tokenizer(hf) == 2 + sum(HAND_SIZES)
    assert tokenizer.add_to_tokenizer(hf) == 0
    table = tokenizer.token_id_table(hf)
    assert table.shape == (3, 5) and table[0, 4] == -1 and table[1, 4] == -1
    for level, size in enumerate(HAND_SIZES):
        expected = hf.convert_tokens_to_ids([tokenizer.level_token(level, value) for value in range(size)])
        assert table[level, :size].tolist() == expected
    for index in range(1, tokenizer.n_items):
        cid = tokenizer.cid(index)
        ids = hf.encode(cid, add_special_tokens=False)
        code_ids = [table[level, value].item() for level, value in enumerate(tokenizer.code(index))]
        assert ids == [tokenizer.begin_id(hf), *code_ids, tokenizer.end_id(hf)]
        assert hf.decode(ids) == cid
    framed = hf.encode(f"next: {tokenizer.cid(1)} done", add_special_tokens=False)
    assert hf.convert_ids_to_tokens(framed).count("<b_1>") == 1


def test_save_load_round_trip(tmp_path):
    tokenizer = hand_tokenizer()
    path = tokenizer.save(tmp_path / "cache")
    assert path.exists() and not list(path.parent.glob("*.partial"))
    loaded = ItemTokenizer.load(tmp_path / "cache")
    assert loaded.item_ids == tokenizer.item_ids and loaded.terms == tokenizer.terms
    assert loaded.level_sizes == tokenizer.level_sizes
    assert torch.equal(loaded.codes_tensor, tokenizer.codes_tensor)
    assert [loaded.cid(i) for i in range(1, 8)] == [tokenizer.cid(i) for i in range(1, 8)]


def test_rejects_bad_codes():
    item_ids, terms = ["[PAD]", "x", "y"], [[], [], []]
    with pytest.raises(ValueError, match="share"):
        ItemTokenizer(item_ids, np.array([[-1, -1], [0, 1], [0, 1]]), terms)
    with pytest.raises(ValueError, match="padding"):
        ItemTokenizer(item_ids, np.array([[0, 0], [0, 1], [1, 1]]), terms)
    with pytest.raises(ValueError, match="level sizes"):
        ItemTokenizer(item_ids, np.array([[-1, -1], [0, 1], [2, 1]]), terms, level_sizes=[2, 2])
