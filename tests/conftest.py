"""Shared fixtures: one torch thread, a temporary working directory, tiny data cut from ml-100k."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import recbole_navigen  # noqa: F401  (applies the compatibility shims before any RecBole use)

TINY = "ml-tiny"
TINY_CONFIG = {
    "epochs": 1,
    "train_batch_size": 256,
    "eval_batch_size": 256,
    "show_progress": False,
    "state": "WARNING",
    "hidden_size": 16,
    "inner_size": 32,
    "embedding_size": 16,
    "n_layers": 1,
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
}

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """RecBole writes ./log, ./log_tensorboard and ./saved: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NAVIGEN_DATA_PATH", raising=False)


@pytest.fixture(scope="session")
def tiny_data_path(tmp_path_factory) -> Path:
    """A data folder holding `ml-tiny/ml-tiny.inter`: the last 25 interactions of 40 ml-100k users."""
    import recbole

    source = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"
    inter = pd.read_csv(source, sep="\t")
    users = sorted(inter["user_id:token"].unique())[:40]
    inter = inter[inter["user_id:token"].isin(users)].sort_values(["user_id:token", "timestamp:float"])
    inter = inter.groupby("user_id:token").tail(25)
    root = tmp_path_factory.mktemp("data")
    (root / TINY).mkdir()
    inter[["user_id:token", "item_id:token", "timestamp:float"]].to_csv(
        root / TINY / f"{TINY}.inter", sep="\t", index=False
    )
    items = pd.read_csv(source.with_suffix(".item"), sep="\t", dtype=str, keep_default_na=False)
    items = items[items["item_id:token"].isin(inter["item_id:token"].astype(str))].copy()
    items.iloc[-1, 1:] = ""  # one item without any text, as real catalogues have
    items.to_csv(root / TINY / f"{TINY}.item", sep="\t", index=False)
    return root


@pytest.fixture()
def tiny_name() -> str:
    return TINY


@pytest.fixture()
def tiny_config(tiny_data_path) -> dict:
    return {**TINY_CONFIG, "data_path": str(tiny_data_path)}


@pytest.fixture()
def tiny_item_config(tiny_config) -> dict:
    """The tiny data with its item texts loaded."""
    return {**tiny_config, "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                                        "item": ["item_id", "movie_title", "release_year", "class"]},
            "item_text_fields": ["movie_title", "release_year", "class"],
            "tid_phrase_fields": ["movie_title", "class"]}


@pytest.fixture(scope="session")
def tiny_text_encoder(tmp_path_factory, tiny_data_path) -> str:
    """A folder with a small random BERT and a WordPiece tokenizer trained on the tiny items' text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    text = (tiny_data_path / TINY / f"{TINY}.item").read_text().splitlines()
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(text, trainers.WordPieceTrainer(vocab_size=400, special_tokens=special))
    folder = tmp_path_factory.mktemp("tiny-encoder")
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def fake_server():
    """A fake OpenAI-compatible server on 127.0.0.1 (free port), stopped after the test."""
    from fake_openai import start_server

    fake, stop = start_server()
    yield fake
    stop()
