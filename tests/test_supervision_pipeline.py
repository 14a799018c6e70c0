"""The supervision job on tiny data: samples from the training split only, the JSONL contract, resuming after
an interruption, reuse of a finished run, and the `supervise` command with the heuristic teacher and with an
LLM teacher on the fake OpenAI server."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml
from fake_openai import supervision_answer
from recbole.data import create_dataset, data_preparation

import run_recbole_navigen
from recbole_navigen.config import Config
from recbole_navigen.supervision import pipeline
from recbole_navigen.supervision.pipeline import run_supervision
from recbole_navigen.supervision.prompts import step_of

KEYS = ["sample_id", "user", "history", "target", "history_tids", "target_tid", "teacher", "status", "error",
        "reasoning", "instruction", "step1", "step2", "step3", "calls"]


@pytest.fixture()
def supervision_config(tiny_item_config, tiny_text_encoder, tmp_path, tmp_path_factory) -> dict:
    """The tiny data with identifiers built once per session, supervision written under this test's folder."""
    ids = tmp_path_factory.getbasetemp() / "supervision-identifiers"
    return {**tiny_item_config, "text_encoder": tiny_text_encoder, "identifiers_dir": str(ids),
            "cid_codebook_size": 8, "kmeans_niter": 5, "supervision_dir": str(tmp_path / "supervision")}


def _split(tiny_name: str, config_dict: dict):
    config = Config("SASRec", tiny_name, config_dict=config_dict, cmd_args=[])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, dataset, train._dataset, valid._dataset, test._dataset


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _by_user(config, split) -> dict[str, tuple[list[str], str]]:
    """Raw user -> (history, target) of an evaluation split (one row per user)."""
    feat, items = split.inter_feat, config["ITEM_ID_FIELD"]
    users = split.id2token(config["USER_ID_FIELD"], feat[config["USER_ID_FIELD"]].numpy())
    lengths = feat[config["ITEM_LIST_LENGTH_FIELD"]].tolist()
    histories = feat[items + config["LIST_SUFFIX"]].tolist()
    targets = split.id2token(items, feat[items].numpy())
    return {str(user): ([str(i) for i in split.id2token(items, history[:length])], str(target))
            for user, history, length, target in zip(users, histories, lengths, targets)}


def test_heuristic_run_on_tiny_data_uses_the_training_split_only(tiny_name, supervision_config, monkeypatch):
    config, dataset, train, valid, test = _split(tiny_name, supervision_config)
    run = run_supervision(config, dataset, train)
    rows = _rows(run.path)
    assert run.path.name == "supervision.jsonl" and run.path.parent.parent.name == tiny_name
    assert len(rows) == 40 and [row["user"] for row in rows] == sorted(row["user"] for row in rows)
    valid_rows, test_rows = _by_user(config, valid), _by_user(config, test)
    for row in rows:
        assert list(row) == KEYS
        assert row["teacher"] == "heuristic" and row["status"] == "ok" and row["error"] is None
        assert isinstance(row["reasoning"], str) and row["instruction"] == row["step2"]["best"]["prompt"]
        valid_history, valid_target = valid_rows[row["user"]]
        # The user's last training target is the last item of the validation history, and the history before
        # it is the rest: no validation or test item is in the sample.
        assert row["target"] == valid_history[-1] and row["history"][-19:] == valid_history[:-1][-19:]
        assert valid_target not in (row["target"], *row["history"][-1:])
        assert test_rows[row["user"]][1] != row["target"]
        assert row["target_tid"] and row["history_tids"] and len(row["history_tids"]) == len(row["history"])
        assert row["step1"]["shown_history"] == min(10, len(row["history"]))
        assert len(row["step2"]["rounds"]) == 2 and all(len(r["population"]) == 3 for r in row["step2"]["rounds"])
    summary = json.loads((run.path.parent / "summary.json").read_text())
    assert summary["teacher"] == "heuristic" and summary["done"] == 40 and summary["failed"] == 0
    assert summary["teacher_calls"] == 40 * 8 and [s["stage"] for s in summary["fitness_by_round"]] == \
        ["round 1", "round 2", "final"]
    gains = [stage["best"] for stage in summary["fitness_by_round"]]
    assert gains == sorted(gains)  # the elite is kept: the mean best never drops

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was supervised again")

    with monkeypatch.context() as patched:
        patched.setattr(pipeline, "supervise_sample", must_not_run)
        again = run_supervision(config, dataset, train)
    assert again.path == run.path and again.summary["reused"]

    fewer, *_ = _split(tiny_name, {**supervision_config, "supervision_max_users": 10})
    drawn = run_supervision(fewer, dataset, train)
    users = [row["user"] for row in _rows(drawn.path)]
    assert drawn.path.parent != run.path.parent and len(users) == 10 and users == sorted(users)
    assert users == [row["user"] for row in _rows(run_supervision(fewer, dataset, train).path)]


def test_resume_after_an_interruption_gives_the_same_file(tiny_name, supervision_config, tmp_path, monkeypatch):
    config, dataset, train, *_ = _split(tiny_name, {**supervision_config, "supervision_max_users": 12})
    reference = run_supervision(config, dataset, train).path.read_bytes()

    config["supervision_dir"] = str(tmp_path / "interrupted")
    real, calls, stop_at = pipeline.supervise_sample, [], [6]

    def interrupted(*args):
        calls.append(args[1].sample_id)
        if len(calls) in stop_at:
            raise KeyboardInterrupt  # ^C while the sixth sample runs
        return real(*args)

    monkeypatch.setattr(pipeline, "supervise_sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_supervision(config, dataset, train)
    progress = next((tmp_path / "interrupted").rglob("progress.jsonl"))
    assert len(progress.read_text().splitlines()) == 5 and not (progress.parent / "supervision.jsonl").exists()
    with open(progress, "a") as stream:
        stream.write('{"sample_id": "ml-tiny:torn", "user": ')  # killed mid-line

    calls.clear()
    stop_at.clear()
    resumed = run_supervision(config, dataset, train)
    assert len(calls) == 7  # only the samples not yet finished
    assert resumed.path.read_bytes() == reference
    assert resumed.summary["resumed"] == 5 and resumed.summary["new_samples"] == 7


def test_supervise_command_with_the_heuristic_teacher(tiny_name, supervision_config, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(supervision_config))
    run_recbole_navigen.main(["supervise", f"--dataset={tiny_name}", f"--config_files={path}", "--max_users=3",
                              "--supervision_rounds=1"])
    printed = capsys.readouterr().out
    assert "by teacher=heuristic: 3 samples, 3 done, 0 failed" in printed
    assert "teacher calls 18 (6.0 per sample)" in printed
    assert "mean fitness per round (best / population mean): round 1 " in printed and ", final " in printed
    assert len(_rows(Path(printed.rsplit("written to ", 1)[1].strip()))) == 3


def test_supervise_command_with_an_llm_teacher_records_failures(tiny_name, supervision_config, tmp_path, capsys,
                                                                 fake_server):
    seen, lock = {"step1": 0, "founders": 0}, threading.Lock()

    def answer(body):
        step, first_ask = step_of(body["messages"][0]["content"]), len(body["messages"]) == 2
        with lock:  # requests arrive concurrently
            if step in seen and first_ask:
                seen[step] += 1
            number = seen.get(step)
        if step == "step1" and first_ask and number == 1:
            return "Let me think about it."  # the first step-1 answer is not JSON: re-asked, then fine
        if step == "founders" and (number == 1 or not first_ask):
            return '{"candidates": [{"strategy": "conservative"'  # cut off, and cut off again
        return supervision_answer(body)

    fake_server.responder = answer
    settings = {**supervision_config, "teacher_base_url": fake_server.base_url, "teacher_model": "fake-teacher",
                "teacher_api_key_env": None, "teacher_cache_dir": str(tmp_path / "cache"), "teacher_concurrency": 2,
                "teacher_max_retries": 0}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    run_recbole_navigen.main(["supervise", f"--dataset={tiny_name}", f"--config_files={path}", "--teacher=openai",
                              "--max_users=4", "--supervision_rounds=1"])
    printed = capsys.readouterr().out
    assert "by teacher=openai:fake-teacher: 4 samples, 3 done, 1 failed" in printed
    assert "re-asks 2" in printed and "failed 1x: step2: founders: the JSON object is cut off" in printed
    rows = _rows(next((tmp_path / "supervision").rglob("supervision.jsonl")))
    assert {row["teacher"] for row in rows} == {"openai:fake-teacher"}
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["instruction"] is None and failed[0]["reasoning"] is None
    assert failed[0]["step1"]["reasoning"] and failed[0]["calls"]["reasks"] >= 1
    ok = [row for row in rows if row["status"] == "ok"]
    assert all(row["reasoning"].startswith("I read my history") for row in ok)
    assert sum(row["calls"]["requests"] for row in rows) == len(fake_server.requests)
