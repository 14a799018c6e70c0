"""The runner: one model prints RecBole's results; several models or seeds write the sweep table."""

from __future__ import annotations

import csv
import json
import logging
import statistics
from pathlib import Path

import pytest
import yaml

import run_recbole_navigen
from recbole_navigen import sweep
from recbole_navigen.evaluation.sampling import sample_users
from recbole_navigen.sweep import SweepSpec, summarise


@pytest.fixture()
def tiny_file(tmp_path, tiny_config) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return str(path)


def _run(*args: str) -> None:
    run_recbole_navigen.main(list(args))


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_single_model_prints_recbole_results(tiny_name, tiny_file, caplog):
    caplog.set_level(logging.INFO)
    _run("--model=SASRec", f"--dataset={tiny_name}", f"--config_files={tiny_file}")
    assert "test result" in caplog.text and "ndcg@10" in caplog.text
    assert list(Path("saved").glob("SASRec-*.pth")) and not Path("results").exists()


def test_two_models_write_one_table(tiny_name, tiny_file, capsys):
    _run("--models=SASRec,GRU4Rec", f"--dataset={tiny_name}", f"--config_files={tiny_file}", "--run_id=two")
    run_dir = Path("results", tiny_name, "two")
    rows = _read_csv(run_dir / "summary.csv")
    assert [row["model"] for row in rows] == ["SASRec", "GRU4Rec"]
    for row in rows:
        record = json.loads((run_dir / f"{row['model']}.json").read_text())
        assert float(row["recall@10"]) == pytest.approx(record["test"]["recall@10"])
        assert record["n_params"] > 0 and record["train_seconds"] > 0 and record["eval_users"] == 40
        assert record["config"]["model"] == row["model"] and record["config"]["epochs"] == 1
    sasrec, gru = (json.loads((run_dir / f"{m}.json").read_text()) for m in ("SASRec", "GRU4Rec"))
    assert sasrec["split_fingerprint"] == gru["split_fingerprint"]
    printed = capsys.readouterr().out
    assert "| SASRec | 1 |" in printed and "| GRU4Rec | 1 |" in printed
    assert printed.splitlines()[0] == (run_dir / "summary.md").read_text().splitlines()[0]


def test_seeds_give_mean_and_std_and_resume(tiny_name, tiny_file, monkeypatch):
    args = ("--model=SASRec", "--seeds=1,2", f"--dataset={tiny_name}", f"--config_files={tiny_file}", "--run_id=s")
    _run(*args)
    run_dir = Path("results", tiny_name, "s")
    runs = [json.loads((run_dir / f"SASRec-seed{seed}.json").read_text()) for seed in (1, 2)]
    assert [run["seed"] for run in runs] == [1, 2]
    values = [run["test"]["mrr@20"] for run in runs]
    row = _read_csv(run_dir / "summary.csv")[0]
    assert float(row["mrr@20"]) == pytest.approx(statistics.fmean(values))
    assert float(row["mrr@20_std"]) == pytest.approx(statistics.stdev(values))
    assert " ± " in (run_dir / "summary.md").read_text()

    def must_not_run(*_, **__):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(sweep, "run_stages", must_not_run)
    _run(*args)  # same run id: everything is done, only the summary is rewritten


def test_sweep_declared_in_yaml(tmp_path, tiny_name, tiny_file):
    declared = tmp_path / "sweep.yaml"
    declared.write_text(yaml.safe_dump({
        "dataset": tiny_name,
        "sweep": {"models": ["GRU4Rec"], "shared": {"epochs": 2}, "per_model": {"GRU4Rec": {"hidden_size": 8}}},
    }))
    _run(f"--config_files={tiny_file} {declared}", "--run_id=y", "--learning_rate=0.01")
    record = json.loads(Path("results", tiny_name, "y", "GRU4Rec.json").read_text())
    assert record["config"]["hidden_size"] == 8 and record["config"]["epochs"] == 2
    assert record["config"]["learning_rate"] == 0.01  # the command line wins over the files


def test_variants_of_one_model_are_rows_of_their_own(tmp_path, tiny_name, tiny_file):
    declared = tmp_path / "variants.yaml"
    declared.write_text(yaml.safe_dump({"dataset": tiny_name, "sweep": {
        "models": ["GRU-8", "GRU-16"], "shared": {"epochs": 1},
        "variants": {"GRU-8": {"model": "GRU4Rec", "hidden_size": 8}, "GRU-16": {"model": "GRU4Rec", "hidden_size": 16}},
    }}))
    _run(f"--config_files={tiny_file} {declared}", "--run_id=v")
    run_dir = Path("results", tiny_name, "v")
    records = {name: json.loads((run_dir / f"{name}.json").read_text()) for name in ("GRU-8", "GRU-16")}
    assert records["GRU-8"]["config"]["hidden_size"] == 8 and records["GRU-16"]["config"]["hidden_size"] == 16
    assert [row["model"] for row in _read_csv(run_dir / "summary.csv")] == ["GRU-8", "GRU-16"]
    with pytest.raises(ValueError, match="must name their `model`"):
        SweepSpec.from_config({"sweep": {"models": ["A"], "variants": {"A": {"hidden_size": 8}}}})


def test_parallel_jobs_give_the_same_table_as_one_after_another(tiny_name, tiny_file):
    base = ("--models=SASRec,GRU4Rec", f"--dataset={tiny_name}", f"--config_files={tiny_file}")
    _run(*base, "--run_id=serial")
    _run(*base, "--run_id=parallel", "--parallel=2")
    serial, parallel = (_read_csv(Path("results", tiny_name, run, "summary.csv")) for run in ("serial", "parallel"))
    assert [row["model"] for row in parallel] == ["SASRec", "GRU4Rec"]
    for one, other in zip(serial, parallel):  # same seed, same data: the same numbers in another process
        assert float(one["ndcg@10"]) == pytest.approx(float(other["ndcg@10"]), abs=1e-4)


def test_bad_sweep_section_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="bad.yaml"):
        SweepSpec.from_config({"sweep": {"model": ["SASRec"]}}, str(tmp_path / "bad.yaml"))


def test_summary_refuses_runs_on_different_splits():
    runs = [
        {"model": "A", "split_fingerprint": "x", "eval_users": 5, "test": {"ndcg@10": 0.1}},
        {"model": "B", "split_fingerprint": "y", "eval_users": 5, "test": {"ndcg@10": 0.2}},
    ]
    with pytest.raises(RuntimeError, match="different data splits"):
        summarise(runs)


def test_eval_user_sample_is_the_same_for_every_model(tiny_name, tiny_file):
    _run("--models=SASRec,GRU4Rec", f"--dataset={tiny_name}", f"--config_files={tiny_file}", "--run_id=sample",
         "--eval_user_sample=10")
    run_dir = Path("results", tiny_name, "sample")
    runs = [json.loads((run_dir / f"{model}.json").read_text()) for model in ("SASRec", "GRU4Rec")]
    assert [run["eval_users"] for run in runs] == [10, 10] and runs[0]["total_users"] == 40
    assert runs[0]["split_fingerprint"] == runs[1]["split_fingerprint"]
    assert "sample of 10 of 40 users (eval_user_sample=10" in (run_dir / "summary.md").read_text()


def test_sample_users_is_seeded_and_checked():
    users = [f"u{i}" for i in range(50)]
    assert sample_users(users, 10, seed=1) == sample_users(list(reversed(users)), 10, seed=1)
    assert sample_users(users, 10, seed=1) != sample_users(users, 10, seed=2)
    assert len(sample_users(users, 0.2, seed=1)) == 10
    for bad in (0, 51, 1.5):
        with pytest.raises(ValueError, match="eval_user_sample"):
            sample_users(users, bad, seed=1)


def test_malformed_parameter_is_an_error():
    with pytest.raises(SystemExit):
        run_recbole_navigen.parse_args(["--model=SASRec", "--epochs", "3"])
