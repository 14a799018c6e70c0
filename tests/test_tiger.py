"""TIGER as a RecBole model, and the batched constrained beam search it shares with NaviGen."""

from __future__ import annotations

import pytest
import torch
from recbole.data import create_dataset, data_preparation

import recbole_navigen
from recbole_navigen.config import Config
from recbole_navigen.decoding.hf_reference import dict_trie, generate_one_by_one
from recbole_navigen.model.tiger import END, TIGER
from recbole_navigen.quick_start import run_model

SMALL_TIGER = {
    "d_model": 32, "d_kv": 16, "d_ff": 64, "num_heads": 2, "num_encoder_layers": 1, "num_decoder_layers": 1,
    "user_hash_buckets": 16, "cid_codebook_size": 8, "rqvae_epochs": 5, "rqvae_hidden_sizes": [32],
    "rqvae_latent_dim": 8, "train_batch_size": 64, "eval_batch_size": 16,
}


@pytest.fixture()
def tiger_config(tiny_item_config, tiny_text_encoder, tmp_path) -> dict:
    return {**tiny_item_config, **SMALL_TIGER, "text_encoder": tiny_text_encoder,
            "identifiers_dir": str(tmp_path / "ids")}


@pytest.fixture()
def tiger_and_batch(tiny_name, tiger_config):
    config = Config("TIGER", tiny_name, config_dict=tiger_config, cmd_args=[])
    train, _, test = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = TIGER(config, train._dataset).eval()
    interaction = next(iter(test))[0]
    return model, interaction


def test_registry_and_training_through_recbole(tiny_name, tiger_config):
    assert recbole_navigen.get_model("TIGER") is TIGER
    result = run_model("TIGER", tiny_name, config_dict=tiger_config, cmd_args=[])
    assert result.model == "TIGER" and result.eval_users == 40
    assert set(result.test) >= {"recall@10", "ndcg@10", "mrr@10"}


def test_beams_are_catalogue_items_and_fill_the_score_table(tiger_and_batch):
    model, interaction = tiger_and_batch
    result = model.beam_search(interaction)
    assert result.items.shape == (len(result.items), model.beam_size)
    assert (result.items > 0).all()  # every beam is a real item, never padding or a made-up code
    assert torch.equal(model.item_tokens[result.items] - model.token_table[:, 0], result.codes)
    for row in result.items:
        assert len(set(row.tolist())) == model.beam_size
    assert (result.scores[:, :-1] >= result.scores[:, 1:]).all()
    scores = model.full_sort_predict(interaction)
    assert scores.shape == (len(result.items), model.n_items)
    assert (torch.isfinite(scores).sum(1) == model.beam_size).all()
    best = scores.topk(5).indices
    assert torch.equal(best, result.items[:, :5])


def test_batched_search_ranks_exactly_as_hugging_face_generate(tiger_and_batch):
    model, interaction = tiger_and_batch
    result = model.beam_search(interaction)
    input_ids, attention_mask = model.encoder_inputs(interaction)
    trie = dict_trie(model.item_tokens[1:], END)
    reference = generate_one_by_one(model.t5, input_ids[:6], attention_mask[:6], trie, model.levels, model.beam_size)
    for user, ranked in enumerate(reference):
        ours = [tuple(model.item_tokens[item].tolist()) for item in result.items[user]]
        assert ours == ranked


def test_predict_scores_agree_with_beam_scores(tiger_and_batch):
    model, interaction = tiger_and_batch
    result = model.beam_search(interaction)
    interaction.update(type(interaction)({model.ITEM_ID: result.items[:, 0]}))
    assert torch.allclose(model.predict(interaction), result.scores[:, 0], atol=1e-4)


def test_beam_size_must_cover_topk(tiny_name, tiger_config):
    config = Config("TIGER", tiny_name, config_dict={**tiger_config, "beam_size": 5}, cmd_args=[])
    train, _, _ = data_preparation(config, create_dataset(config))
    with pytest.raises(ValueError, match="beam_size 5 must be at least max\\(topk\\) = 20"):
        TIGER(config, train._dataset)
