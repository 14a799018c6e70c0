"""NaviGen end to end on tiny data: a tiny random backbone trained through RecBole, then ranked."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_stages_run_in_order_resume_and_start_from_the_stage_before(tiny_name, navigen_config, caplog):
    import logging

    from recbole_navigen.pipeline import run_stages

    caplog.set_level(logging.INFO)
    quick = {**navigen_config, "epochs": 1, "train_steps_per_epoch": 2, "stages": [1, 2], "instruction_samples": 0}
    final = run_stages("NaviGen", tiny_name, config_dict=quick, cmd_args=[])
    stage_one = final.config["init_from"]
    assert final.config["stage"] == 2 and "stage1" in stage_one and "stage2" in final.checkpoint
    summary = (Path(final.checkpoint).parents[1] / "summary.md").read_text()
    assert "| stage 1 | ran |" in summary and "| stage 2 | ran |" in summary and "| identifiers | ready |" in summary

    trained = torch.load(stage_one, weights_only=False)["state_dict"]
    model, _, _ = _model(tiny_name, {**navigen_config, "init_from": stage_one})
    llm = model.llm.get_base_model()
    new_rows = torch.zeros(llm.get_input_embeddings().weight.shape[0], dtype=torch.bool)
    new_rows[model.token_table[model.token_table >= 0]] = True
    new_rows[[model.begin_id, model.end_id]] = True
    saved_rows = trained["llm.model.embed_tokens.weight"]
    assert saved_rows.shape[0] == int(new_rows.sum())  # the checkpoint holds only the code tokens' rows
    assert torch.equal(llm.get_input_embeddings().weight[new_rows], saved_rows)
    assert torch.equal(llm.get_output_embeddings().weight, trained["llm.lm_head.weight"])  # untied by stage 1
    unrelated, _, _ = _model(tiny_name, navigen_config)  # no init_from: its head is still tied to the embedding
    with pytest.raises(RuntimeError, match="does not train"):
        unrelated.load_checkpoint(final.checkpoint)

    caplog.clear()
    again = run_stages("NaviGen", tiny_name, config_dict=quick, cmd_args=[])
    assert again.checkpoint == final.checkpoint and again.test == final.test
    summary = (Path(final.checkpoint).parents[1] / "summary.md").read_text()
    assert "| stage 1 | cached |" in summary and "| stage 2 | cached |" in summary
    assert "Train     0" not in caplog.text and "epoch 0 training" not in caplog.text  # nothing trained again

    # Settings of a later stage only (another run folder): stage 1 comes from the first run, stage 2 trains.
    other = run_stages("NaviGen", tiny_name, config_dict={**quick, "stage_settings": {2: {"learning_rate": 0.01}}},
                       cmd_args=[])
    assert Path(other.checkpoint).parents[1] != Path(final.checkpoint).parents[1]
    assert other.config["init_from"] == stage_one and other.config["learning_rate"] == 0.01
    summary = (Path(other.checkpoint).parents[1] / "summary.md").read_text()
    assert "| stage 1 | cached |" in summary and "| stage 2 | ran |" in summary


def _write_supervision(path: Path, model, users: int = 6) -> Path:
    """Supervision rows as the pipeline writes them: one per user, raw item ids, the teacher's texts."""
    ids = model.items.item_ids
    rows = [{"sample_id": str(u), "user": str(u), "history": ids[1 + u:4 + u], "target": ids[5 + u],
             "teacher": "heuristic", "status": "ok", "error": None,
             "step1": {"reasoning": "I reason from the history to the target."},
             "reasoning": f"I see a taste for {model.items.tid(5 + u)[:1]} and I expect more of it.",
             "instruction": "A warm cinematic still of a quiet evening scene, soft light, wide shot."}
            for u in range(users)]
    rows.append({**rows[0], "sample_id": "failed", "status": "failed", "error": "step2: no JSON",
                 "reasoning": None, "instruction": None})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_cid2ins_trains_on_supervision_and_writes_instructions(tiny_name, navigen_config, tmp_path, capsys):
    import run_recbole_navigen
    from recbole_navigen.pipeline import run_stages

    plain, train, _ = _model(tiny_name, navigen_config)
    supervision = _write_supervision(tmp_path / "supervision.jsonl", plain)
    settings = {**navigen_config, "epochs": 1, "train_steps_per_epoch": 2, "stages": [2],
                "supervision_path": str(supervision), "instruction_samples": 4, "instruction_max_new_tokens": 24,
                "max_length": 1024,
                "task_ratios": {"cid2cid": 0.5, "cid2ins": 0.5}}
    model, train, _ = _model(tiny_name, settings)
    assert len(model.supervision.examples) == 6 and model.supervision.skipped == {"status failed": 1}
    model.calculate_loss(next(iter(train)))
    assert model.task_counts["cid2ins"] > 0

    final = run_stages("NaviGen", tiny_name, config_dict=settings, cmd_args=[])
    written = Path("results") / tiny_name / Path(final.checkpoint).parents[1].name / "instructions.jsonl"
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert row["supervision"] == "heuristic" and row["parse_status"] in {"ok", "ok after retry", "failed"}
        assert (row["parse_error"] is None) == (row["parse_status"] != "failed")
        assert len(row["predicted"]) == 20 and row["predicted"][0]["cid"].startswith("<|cid_begin|>")
        assert row["history"] and {"item", "text"} <= set(row["history"][0]) and row["target"]["item"]

    output = tmp_path / "generated.jsonl"
    run_recbole_navigen.main(["generate", f"--checkpoint={final.checkpoint}", "--users=2", f"--output={output}"])
    assert f"written to {output}: 2 users" in capsys.readouterr().out
    first = json.loads(output.read_text().splitlines()[0])
    assert first["predicted"] == rows[0]["predicted"]  # the reloaded checkpoint ranks as the trained model did


def test_generate_refuses_a_missing_or_foreign_checkpoint(tiny_name, tiny_config, tmp_path):
    import run_recbole_navigen

    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        run_recbole_navigen.main(["generate", f"--checkpoint={tmp_path / 'missing.pth'}"])
    sasrec = run_model("SASRec", tiny_name, config_dict=tiny_config, cmd_args=[])
    with pytest.raises(ValueError, match="holds a SASRec"):
        run_recbole_navigen.main(["generate", f"--checkpoint={sasrec.checkpoint}"])


def test_instruction_replies_get_one_structured_retry(tiny_name, navigen_config, monkeypatch):
    model, _, _ = _model(tiny_name, navigen_config)
    first = ["I like calm films.\n</think>\n\n" + json.dumps({"target_tid": ["drama"], "target_ins": "A quiet room."}),
             "I like westerns and the reply never closes its think block",
             "I like noise.</think> not json"]
    calls = []

    def greedy(prompts, prefixes, max_new_tokens):
        calls.append(prefixes)
        return first if len(calls) == 1 else ['western"],"target_ins":"A dusty town at dawn."}', "nothing"]

    monkeypatch.setattr(model, "_greedy", greedy)
    replies = model.generate_instructions([[1, 2], [3], [4, 5]])
    assert [attempts for _, attempts in replies] == [1, 2, 2]
    assert replies[0][0].instruction == "A quiet room." and replies[0][0].error is None
    assert replies[1][0].target_tid == ["western"] and replies[1][0].error is None
    assert "retry" in replies[2][0].error and replies[2][0].instruction is None
    assert calls[1][0].endswith('</think>\n\n{"target_tid":["')  # the kept reasoning, then the forced JSON
    assert "never closes its think block" in calls[1][0]


def test_supervision_rows_are_checked(tiny_name, navigen_config, tmp_path):
    from recbole_navigen.model.instruction_data import read_supervision

    model, _, _ = _model(tiny_name, navigen_config)
    path = _write_supervision(tmp_path / "s.jsonl", model)
    assert len(read_supervision(path, model.items, max_history=2).examples[0].history) == 2
    low = json.loads(path.read_text().splitlines()[0]) | {"step2": {"best": {"overall": -0.5}}}
    path.write_text(path.read_text() + json.dumps(low) + "\n")
    kept = read_supervision(path, model.items, max_history=8, min_fitness=0.0)
    assert len(kept.examples) == 6 and kept.skipped == {"status failed": 1, "fitness below 0.0": 1}
    path.write_text(path.read_text() + json.dumps({"history": ["nope"], "target": "1", "status": "ok",
                                                   "teacher": "heuristic", "reasoning": "r", "instruction": "i"}))
    with pytest.raises(ValueError, match=r"s.jsonl:9: item 'nope' is not in this dataset"):
        read_supervision(path, model.items, max_history=8)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"s.jsonl:1: not a JSON line"):
        read_supervision(path, model.items, max_history=8)
    plain = read_supervision(_write_supervision(tmp_path / "p.jsonl", model), model.items, 8, mode="plain")
    example = plain.examples[0]
    assert example.instruction == f"An image of {', '.join(model.items.tid(example.target))}."
    assert example.reasoning == "I reason from the history to the target."
    with pytest.raises(FileNotFoundError, match="supervise"):
        read_supervision(tmp_path / "absent.jsonl", model.items, max_history=8)


def test_loss_grouped_by_task_equals_one_padded_batch(tiny_name, navigen_config, monkeypatch):
    from recbole_navigen.model.navigen_tasks import cid2cid_sample, cid2tid_sample, encode_for_training

    model, _, _ = _model(tiny_name, navigen_config)
    model.eval()  # no dropout: both losses see the same network
    samples = [cid2cid_sample(model.items, [1, 2, 3], 4), cid2tid_sample(model.items, 5),
               cid2cid_sample(model.items, [6], 7), cid2tid_sample(model.items, 8)]
    monkeypatch.setattr(model, "samples", lambda interaction: samples)
    one_batch = model.llm(**encode_for_training(samples, model.hf_tokenizer, model.max_length)).loss
    grouped = model.calculate_loss(None)
    assert len(model.training_batches(None)) == 2
    assert torch.allclose(grouped, one_batch, atol=1e-5)
    assert model.trained_tokens > 0


def test_bf16_precision_runs_the_backbone_in_bfloat16_with_float32_weights(tiny_name, navigen_config):
    model, train, test = _model(tiny_name, {**navigen_config, "precision": "bf16"})
    model.eval()  # no dropout: the two precisions see the same network
    head_dtypes = []
    model.llm.get_output_embeddings().register_forward_hook(lambda module, args, out: head_dtypes.append(out.dtype))
    interaction = next(iter(train))
    generator_state = model.generator.get_state()
    mixed = model.calculate_loss(interaction)
    model.generator.set_state(generator_state)  # the same task draw
    model.precision = "fp32"
    full = model.calculate_loss(interaction)
    assert head_dtypes[0] == torch.bfloat16 and head_dtypes[-1] == torch.float32
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, full, rtol=0.01)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    model.precision = "bf16"
    head_dtypes.clear()
    assert (model.beam_search(next(iter(test))[0]).items > 0).all()
    assert set(head_dtypes) == {torch.bfloat16}
    with pytest.raises(ValueError, match="precision"):
        _model(tiny_name, {**navigen_config, "precision": "fp16"})


def test_reserved_cache_decodes_as_the_growing_cache(tiny_name, navigen_config, monkeypatch):
    from recbole_navigen.decoding.beam_search import CausalStepper, ReservedLayer

    model, _, test = _model(tiny_name, navigen_config)
    model.eval()
    interaction = next(iter(test))[0]
    reserved_layers = []
    expand = CausalStepper.expand

    def spy(self, beams, steps=0):
        expand(self, beams, steps)
        reserved_layers.extend(layer for layer in self.cache.layers if isinstance(layer, ReservedLayer))

    monkeypatch.setattr(CausalStepper, "expand", spy)
    reserved = model.beam_search(interaction)
    assert reserved_layers  # written in place, reordered after the prompt only
    monkeypatch.setattr(CausalStepper, "expand", lambda self, beams, steps=0: expand(self, beams))
    growing = model.beam_search(interaction)  # Hugging Face's DynamicCache: concatenated, reordered whole
    assert torch.equal(reserved.items, growing.items) and torch.allclose(reserved.scores, growing.scores, atol=1e-5)


def test_reserved_layer_holds_what_a_dynamic_layer_holds():
    from transformers.cache_utils import DynamicLayer

    from recbole_navigen.decoding.beam_search import ReservedLayer

    torch.manual_seed(0)
    users, beams, heads, prompt, dim = 2, 3, 2, 5, 4
    growing, start = DynamicLayer(), DynamicLayer()
    keys, values = torch.randn(users, heads, prompt, dim), torch.randn(users, heads, prompt, dim)
    growing.update(keys, values)
    start.update(keys, values)
    growing.batch_repeat_interleave(beams)
    reserved = ReservedLayer(start, beams, reserve=2)
    for rows in (torch.tensor([2, 2, 0, 4, 3, 3]), torch.tensor([1, 0, 0, 5, 5, 4])):  # within each user's beams
        step = torch.randn(users * beams, heads, 1, dim), torch.randn(users * beams, heads, 1, dim)
        for layer in (growing, reserved):
            layer.update(*step)
            layer.reorder_cache(rows)
        assert torch.equal(reserved.keys, growing.keys) and torch.equal(reserved.values, growing.values)
    with pytest.raises(RuntimeError, match="reserved"):
        reserved.update(*step)
