"""NaviGen end to end on tiny data: a tiny random backbone trained through RecBole, then ranked."""

from __future__ import annotations

import pytest
import torch
from recbole.data import create_dataset, data_preparation

import recbole_navigen
from recbole_navigen.config import Config
from recbole_navigen.model.navigen import NaviGen
from recbole_navigen.quick_start import run_model

SMALL_NAVIGEN = {
    "tiny_backbone": {"vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 512,
                      "tie_word_embeddings": True, "seed": 0},
    "cid_codebook_size": 8, "kmeans_niter": 5, "train_batch_size": 16, "eval_batch_size": 8, "max_length": 384,
    "MAX_ITEM_LIST_LENGTH": 8, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj", "v_proj"],
}


@pytest.fixture()
def navigen_config(tiny_item_config, tiny_text_encoder, tmp_path) -> dict:
    return {**tiny_item_config, **SMALL_NAVIGEN, "text_encoder": tiny_text_encoder,
            "identifiers_dir": str(tmp_path / "ids"), "pretrained_cache_dir": str(tmp_path / "models")}


def _model(tiny_name, config_dict):
    config = Config("NaviGen", tiny_name, config_dict=config_dict, cmd_args=[])
    train, _, test = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    return NaviGen(config, train._dataset), train, test


def test_trains_and_evaluates_through_recbole(tiny_name, navigen_config):
    assert recbole_navigen.get_model("NaviGen") is NaviGen
    result = run_model("NaviGen", tiny_name, config_dict=navigen_config, cmd_args=[])
    assert result.model == "NaviGen" and result.eval_users == 40
    assert set(result.test) >= {"recall@10", "ndcg@10"}


def test_training_mixes_tasks_and_counts_them(tiny_name, navigen_config):
    model, train, _ = _model(tiny_name, {**navigen_config, "task_ratios": {"cid2cid": 0.5, "cid2tid": 0.5,
                                                                            "tid2cid": 0.0, "cid2ins": 0.3}})
    assert model.task_ratios["cid2ins"] == 0.0  # no supervision yet: skipped
    loss = model.calculate_loss(next(iter(train)))
    assert torch.isfinite(loss) and loss.requires_grad
    assert set(model.task_counts) <= {"cid2cid", "cid2tid"} and sum(model.task_counts.values()) == 16


def test_constrained_prediction_returns_catalogue_items(tiny_name, navigen_config):
    model, _, test = _model(tiny_name, navigen_config)
    model.eval()
    interaction = next(iter(test))[0]
    result = model.beam_search(interaction)
    assert (result.items > 0).all()
    for row in result.items:
        assert len(set(row.tolist())) == model.beam_size
    codes = model.items.codes_tensor[result.items]
    assert torch.equal(codes, result.codes)  # each beam spells exactly its item's code
    scores = model.full_sort_predict(interaction)
    assert (torch.isfinite(scores).sum(1) == model.beam_size).all()


def test_stage_one_trains_only_new_rows_and_head(tiny_name, navigen_config):
    model, train, _ = _model(tiny_name, {**navigen_config, "stage": 1})
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("embed_tokens" in name or "lm_head" in name for name in trainable)
    embedding = model.llm.get_input_embeddings().weight
    before = embedding.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.calculate_loss(next(iter(train))).backward()
    optimizer.step()
    new = torch.zeros(len(before), dtype=torch.bool)
    new[model.token_table[model.token_table >= 0]] = True
    new[[model.begin_id, model.end_id]] = True
    assert torch.equal(embedding[~new], before[~new]) and not torch.equal(embedding[new], before[new])


def test_checkpoint_holds_only_trained_weights_and_reloads(tiny_name, navigen_config):
    model, train, test = _model(tiny_name, navigen_config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.calculate_loss(next(iter(train))).backward()
    optimizer.step()
    state = model.state_dict()
    assert state and all("lora_" in key or "embed_tokens" in key or "lm_head" in key for key in state)
    assert not any("mlp" in key and "lora_" not in key for key in state)  # the frozen backbone is not saved

    reloaded, _, _ = _model(tiny_name, navigen_config)
    reloaded.load_state_dict(state)
    reloaded.load_other_parameter(model.other_parameter())
    interaction = next(iter(test))[0]
    model.eval(), reloaded.eval()
    assert torch.equal(model.beam_search(interaction).items, reloaded.beam_search(interaction).items)
    with pytest.raises(RuntimeError, match="lacks trained weights"):
        reloaded.load_state_dict({})
    with pytest.raises(RuntimeError, match="identifiers"):
        reloaded.load_other_parameter({"identifiers": "other"})


def test_trainer_caps_steps_and_logs_the_task_mix(tiny_name, navigen_config, caplog):
    import logging

    from recbole_navigen.trainer import NaviGenTrainer

    config = Config("NaviGen", tiny_name, config_dict={**navigen_config, "train_steps_per_epoch": 2,
                                                       "stage": 1, "weight_decay": 0.1}, cmd_args=[])
    train, _, _ = data_preparation(config, create_dataset(config))
    model = NaviGen(config, train._dataset)
    assert recbole_navigen.get_trainer(config["MODEL_TYPE"], "NaviGen") is NaviGenTrainer
    embedding = model.llm.get_input_embeddings().weight
    old_rows = embedding[: model.begin_id].detach().clone()  # the backbone's own tokens come first
    caplog.set_level(logging.INFO)
    NaviGenTrainer(config, model)._train_epoch(train, 0)
    assert sum(model.task_counts.values()) == 2 * config["train_batch_size"] < len(train.dataset)
    assert "epoch 0 task mix: {'cid2cid'" in caplog.text
    assert torch.equal(embedding[: model.begin_id], old_rows)  # weight decay spared the masked rows


def test_stages_run_in_order_and_stage_two_starts_from_stage_one(tiny_name, navigen_config, caplog):
    import logging

    from recbole_navigen.quick_start import run_stages

    caplog.set_level(logging.INFO)
    quick = {**navigen_config, "epochs": 1, "train_steps_per_epoch": 2, "stages": [1, 2]}
    final = run_stages("NaviGen", tiny_name, config_dict=quick, cmd_args=[])
    assert "stage 1" in caplog.text and "stage 2" in caplog.text
    stage_one = [line for line in caplog.text.splitlines() if "stage 1" in line][-1].rsplit("checkpoint ", 1)[1]
    assert final.config["stage"] == 2 and final.config["init_from"] == stage_one
    assert "stage1" in stage_one and "stage2" in final.checkpoint

    trained = torch.load(stage_one, weights_only=False)["state_dict"]
    model, _, _ = _model(tiny_name, {**navigen_config, "init_from": stage_one})
    llm = model.llm.get_base_model()
    assert torch.equal(llm.get_input_embeddings().weight, trained["llm.model.embed_tokens.weight"])
    assert torch.equal(llm.get_output_embeddings().weight, trained["llm.lm_head.weight"])  # untied by stage 1


def test_generate_writes_predictions_for_a_trained_checkpoint(tiny_name, navigen_config, tmp_path, capsys):
    import json

    import yaml

    import run_recbole_navigen

    settings = {**navigen_config, "epochs": 1, "train_steps_per_epoch": 2}
    trained = run_model("NaviGen", tiny_name, config_dict=settings, cmd_args=[])
    config_file = tmp_path / "navigen.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    output = tmp_path / "predictions.jsonl"
    run_recbole_navigen.main(["generate", f"--dataset={tiny_name}", f"--config_files={config_file}",
                              f"--checkpoint={trained.checkpoint}", "--users=5", f"--output={output}"])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 5 and f"written to {output}" in capsys.readouterr().out
    for row in rows:
        assert len(row["predicted"]) == 20 and row["predicted"][0]["cid"].startswith("<|cid_begin|>")
        assert row["history"] and {"item", "text"} <= set(row["history"][0])
        assert row["tid_parsed"] == (row["predicted_tid"] is not None) and row["instruction"] is None
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        run_recbole_navigen.main(["generate", f"--dataset={tiny_name}", f"--config_files={config_file}",
                                  f"--checkpoint={tmp_path / 'missing.pth'}"])
    with pytest.raises(ValueError, match="not SASRec"):
        run_recbole_navigen.main(["generate", "--model=SASRec", f"--dataset={tiny_name}",
                                  f"--config_files={config_file}", f"--checkpoint={trained.checkpoint}"])
