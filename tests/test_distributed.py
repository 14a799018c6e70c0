"""RecBole's multi-process path on CPUs (gloo): two processes give the one-process result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recbole_navigen.distributed import interleave, run_distributed
from recbole_navigen.quick_start import run_identifiers, run_model


def test_interleave_undoes_the_distributed_sampler():
    # 5 samples on 2 ranks: rank 0 held 0, 2, 4; rank 1 held 1, 3 and a repeat of 0 (padding)
    parts = [torch.tensor([[0], [2], [4]]), torch.tensor([[1], [3], [0]])]
    assert interleave(parts, 5).flatten().tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="equal shares"):
        interleave([torch.zeros(2, 1), torch.zeros(1, 1)], 3)


def test_two_gloo_processes_match_one(tiny_name, tiny_config):
    frozen = {**tiny_config, "learning_rate": 0.0, "dist_backend": "gloo"}  # no update: evaluation alone differs
    one = run_model("SASRec", tiny_name, config_dict=frozen, cmd_args=[])
    two = run_distributed(run_model, "SASRec", tiny_name, None, frozen, [], nproc=2)
    assert two.config["single_spec"] is False and two.config["world_size"] == 2
    assert str(two.config["device"]) == "cpu" and two.eval_users == one.eval_users == 40
    assert two.test == one.test  # every user's rows gathered: the same metrics, not an average of averages

    trained = {**tiny_config, "dist_backend": "gloo", "epochs": 2}
    one = run_model("SASRec", tiny_name, config_dict=trained, cmd_args=[])
    two = run_distributed(run_model, "SASRec", tiny_name, None, trained, [], nproc=2)
    for metric in ("recall@10", "ndcg@10"):  # halves of each batch, gradients averaged: close, not equal
        assert two.test[metric] == pytest.approx(one.test[metric], abs=0.1)


def test_tiger_in_two_gloo_processes_matches_one(tiny_name, tiny_item_config, tiny_text_encoder, tmp_path):
    from tests.test_tiger import SMALL_TIGER

    frozen = {**tiny_item_config, **SMALL_TIGER, "text_encoder": tiny_text_encoder, "dist_backend": "gloo",
              "identifiers_dir": str(tmp_path / "ids"), "learning_rate": 0.0, "epochs": 1}
    run_identifiers("TIGER", tiny_name, None, frozen, [])  # built once: building draws random numbers
    one = run_model("TIGER", tiny_name, config_dict={**frozen, "checkpoint_dir": "saved/one"}, cmd_args=[])
    two = run_distributed(run_model, "TIGER", tiny_name, None, {**frozen, "checkpoint_dir": "saved/two"}, [],
                          nproc=2)
    assert two.config["world_size"] == 2 and two.eval_users == one.eval_users == 40
    assert two.valid == one.valid and two.test == one.test  # rank 0's weights everywhere, every user's beams


def test_command_line_trains_in_two_processes(tiny_name, tiny_config, tmp_path, capsys):
    import yaml

    import run_recbole_navigen

    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({**tiny_config, "dist_backend": "gloo"}))
    run_recbole_navigen.main(["--model=SASRec", f"--dataset={tiny_name}", f"--config_files={config_file}", "--nproc=2"])
    assert "test: {'recall@5'" in capsys.readouterr().out


# ----- dist_strategy: fsdp (FSDP2 sharding of NaviGen's backbone) -----

FSDP_NAVIGEN = {  # tests/test_navigen.py's small NaviGen
    "tiny_backbone": {"vocab_size": 400, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 512,
                      "tie_word_embeddings": True, "seed": 0},
    "cid_codebook_size": 8, "kmeans_niter": 5, "train_batch_size": 16, "eval_batch_size": 8, "max_length": 384,
    "MAX_ITEM_LIST_LENGTH": 8, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj", "v_proj"],
}


def test_dist_strategy_is_checked(tiny_name, tiny_config):
    from recbole_navigen.config import Config
    from recbole_navigen.distributed import one_process_settings, shard_model

    assert Config("SASRec", tiny_name, config_dict=tiny_config, cmd_args=[])["dist_strategy"] == "ddp"
    with pytest.raises(ValueError, match="dist_strategy must be one of"):
        Config("SASRec", tiny_name, config_dict={**tiny_config, "dist_strategy": "zero3"}, cmd_args=[])
    with pytest.raises(ValueError, match="dist_strategy: fsdp .* nproc > 1"):
        Config("SASRec", tiny_name, config_dict=tiny_config, cmd_args=["--dist_strategy=fsdp"])
    with pytest.raises(ValueError, match="dist_strategy: fsdp .* Hugging Face backbone"):
        shard_model(torch.nn.Linear(2, 2), torch.device("cpu"))
    settings = {"epochs": 1, "nproc": 2, "world_size": 2, "local_rank": 1, "port": "1234", "dist_strategy": "fsdp"}
    assert one_process_settings(settings) == {"epochs": 1}


def _shard_a_tiny_llama(_model, _dataset, _files, settings: dict, _cmd_args) -> dict:
    """One rank of `test_fsdp_shards_a_backbone_and_keeps_masked_rows` (run by `run_distributed`)."""
    import copy

    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from recbole_navigen.decoding.beam_search import CausalStepper
    from recbole_navigen.distributed import shard_model, whole, whole_values
    from recbole_navigen.llm.backbone import parameter_groups, train_new_rows_only

    rank = settings["local_rank"]
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://{settings['ip']}:{settings['port']}")
    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.llm = LlamaForCausalLM(LlamaConfig(vocab_size=45, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                              num_key_value_heads=2, intermediate_size=32, tie_word_embeddings=True))
    new_ids = torch.arange(40, 45)
    train_new_rows_only(holder.llm, new_ids, "rows")  # the tied embedding learns rows 40-44 only
    embedding = holder.llm.get_input_embeddings().weight
    start = embedding.detach().clone()
    reference = copy.deepcopy(holder.llm).eval()  # on rank 0: the model the shards must make up
    with torch.no_grad():
        embedding.add_(rank)  # rank 1 starts elsewhere, as a per-rank seeded adapter would
    shard_model(holder, torch.device("cpu"))
    embedding = holder.llm.get_input_embeddings().weight
    sharded = type(embedding).__name__ == "DTensor" and hasattr(embedding, "navigen_row_mask")
    starts_from_rank_0 = torch.equal(whole(embedding), start)

    def beam_steps(llm) -> list[torch.Tensor]:  # the calls NaviGen's beam search makes: prefill, expand, steps
        prompts = torch.randint(0, 45, (2, 6), generator=torch.Generator().manual_seed(rank))
        stepper = CausalStepper(llm, prompts, torch.ones_like(prompts))
        logits = [stepper.start()]
        stepper.expand(3)
        logits.append(stepper.step(torch.arange(6)))
        stepper.reorder(torch.tensor([1, 0, 2, 4, 3, 5]))
        return [*logits, stepper.step(torch.arange(6, 12))]

    holder.llm.eval()
    with torch.no_grad():
        pairs = zip(beam_steps(holder.llm), beam_steps(reference), strict=True)
        predicts_as_one = all(torch.allclose(sharded_logits, logits, atol=1e-5) for sharded_logits, logits in pairs)
    holder.llm.train()
    optimizer = torch.optim.Adam(parameter_groups(holder.llm, 0.1), lr=0.1)
    ids = torch.randint(0, 45, (3, 7), generator=torch.Generator().manual_seed(rank))
    holder.llm(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    after = whole(embedding)
    old = torch.ones(45, dtype=torch.bool)
    old[new_ids] = False
    state = whole_values(holder.llm.state_dict())
    return {"sharded": sharded, "starts_from_rank_0": starts_from_rank_0, "predicts_as_one": predicts_as_one,
            "old_rows_kept": torch.equal(after[old], start[old]),
            "new_rows_moved": not torch.equal(after[~old], start[~old]),
            "whole_state": all(type(value) is torch.Tensor for value in state.values())
            and state["model.embed_tokens.weight"].shape == (45, 16)}


def test_fsdp_shards_a_backbone_and_keeps_masked_rows():
    checks = run_distributed(_shard_a_tiny_llama, None, None, None, {}, [], nproc=2)
    assert checks == {"sharded": True, "starts_from_rank_0": True, "predicts_as_one": True, "old_rows_kept": True,
                      "new_rows_moved": True, "whole_state": True}


@pytest.fixture()
def fsdp_navigen_config(tiny_item_config, tiny_text_encoder, tmp_path) -> dict:
    return {**tiny_item_config, **FSDP_NAVIGEN, "text_encoder": tiny_text_encoder, "dist_backend": "gloo",
            "identifiers_dir": str(tmp_path / "ids"), "pretrained_cache_dir": str(tmp_path / "models")}


def _build_navigen(model, dataset, config_file_list, config_dict, cmd_args) -> str:
    from recbole.data import create_dataset, data_preparation

    from recbole_navigen.config import Config
    from recbole_navigen.model.navigen import NaviGen

    config = Config(model, dataset, config_file_list, config_dict, cmd_args)  # joins the process group
    return NaviGen(config, data_preparation(config, create_dataset(config))[0]._dataset).identifiers_key


def test_ranks_build_caches_one_at_a_time(tiny_name, fsdp_navigen_config):
    # Empty caches, two processes: rank 0 builds the identifiers and the tiny backbone, rank 1 then reads them.
    key = run_distributed(_build_navigen, "NaviGen", tiny_name, None, fsdp_navigen_config, [], nproc=2)
    ids = Path(fsdp_navigen_config["identifiers_dir"])
    assert [folder.name for folder in ids.glob("*/*") if folder.is_dir()] == [key]
    built = list(Path(fsdp_navigen_config["pretrained_cache_dir"]).iterdir())
    assert len(built) == 1 and (built[0] / "config.json").is_file()


def test_fsdp_navigen_in_two_processes_matches_one(tiny_name, fsdp_navigen_config):
    from recbole.data import create_dataset, data_preparation

    from recbole_navigen.config import Config
    from recbole_navigen.generation.instructions import load_trained_navigen
    from recbole_navigen.model.navigen import NaviGen

    # Nothing learned (learning rate 0): training still runs every collective, evaluation alone can differ.
    frozen = {**fsdp_navigen_config, "learning_rate": 0.0, "train_steps_per_epoch": 2}
    config = Config("NaviGen", tiny_name, config_dict=frozen, cmd_args=[])
    NaviGen(config, data_preparation(config, create_dataset(config))[0]._dataset)  # the identifiers and the tiny
    # backbone, built (and cached) once: both runs below then load them, drawing the same random adapters
    one = run_model("NaviGen", tiny_name, config_dict={**frozen, "checkpoint_dir": "saved/one"}, cmd_args=[])
    sharded = {**frozen, "checkpoint_dir": "saved/two", "dist_strategy": "fsdp", "state": "INFO"}
    two = run_distributed(run_model, "NaviGen", tiny_name, None, sharded, [], nproc=2)
    assert two.config["dist_strategy"] == "fsdp" and two.config["world_size"] == 2
    assert any("sharded across 2 processes (2 decoder layers" in log.read_text() for log in Path("log").rglob("*.log"))
    assert two.eval_users == one.eval_users == 40 and two.n_params == one.n_params
    # The sharded model's beam search ranks as one process's (a random model: few hits; the beam search's
    # model calls are compared directly in test_fsdp_shards_a_backbone_and_keeps_masked_rows).
    assert two.valid == pytest.approx(one.valid, abs=1e-4) and two.test == pytest.approx(one.test, abs=1e-4)

    # The checkpoint is a one-process one: whole tensors, the same keys, rows packed, rank 0's starting weights.
    mine, reference = (torch.load(run.checkpoint, map_location="cpu", weights_only=False) for run in (two, one))
    assert mine.keys() == reference.keys() and mine["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():
        assert type(mine["state_dict"][key]) is torch.Tensor and torch.equal(mine["state_dict"][key], value), key
    assert mine["optimizer"]["state"].keys() == reference["optimizer"]["state"].keys()
    for index, slots in reference["optimizer"]["state"].items():
        shapes = {slot: value.shape for slot, value in mine["optimizer"]["state"][index].items()}
        assert shapes == {slot: value.shape for slot, value in slots.items()}
    _, model, _ = load_trained_navigen(two.checkpoint)  # what `generate --checkpoint` does, in one process
    assert all(torch.equal(model.state_dict()[key], value) for key, value in mine["state_dict"].items())
