"""RecBole's multi-process path on CPUs (gloo): two processes give the one-process result."""

from __future__ import annotations

import pytest
import torch

from recbole_navigen.distributed import interleave, run_distributed
from recbole_navigen.quick_start import run_model


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


def test_command_line_trains_in_two_processes(tiny_name, tiny_config, tmp_path, capsys):
    import yaml

    import run_recbole_navigen

    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({**tiny_config, "dist_backend": "gloo"}))
    run_recbole_navigen.main(["--model=SASRec", f"--dataset={tiny_name}", f"--config_files={config_file}", "--nproc=2"])
    assert "test: {'recall@5'" in capsys.readouterr().out
