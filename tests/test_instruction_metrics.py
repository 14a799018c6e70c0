"""Instruction measures, reference writers and the paired comparison, on hand-made rows."""

from __future__ import annotations

import numpy as np
import pytest

from recbole_navigen.evaluation.compare import compare_writers, markdown_table, paired_p_value
from recbole_navigen.evaluation.instructions import (
    instruction_measures,
    leaks,
    summarise,
    term_scores,
    term_shares,
)
from recbole_navigen.evaluation.references import history_keyword_rows, history_keywords, teacher_rows


class BagOfWords:
    """A stand-in sentence encoder: normalised word counts over a fixed vocabulary."""

    def encode(self, texts: list[str]) -> np.ndarray:
        vocabulary = sorted({word for text in texts for word in text.lower().split()})
        rows = np.array([[text.lower().split().count(word) for word in vocabulary] for text in texts], float)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _row(user: str, instruction: str | None, predicted: list[str] | None, status: str = "ok") -> dict:
    return {"user": user, "history": [{"item": "h1", "title": "Fender Strings", "text": "Fender Strings",
                                       "tid": ["guitar strings", "fender"]},
                                      {"item": "h2", "title": "Boss Pedal", "text": "Boss Pedal", "tid": ["pedal"]}],
            "target": {"item": "t", "title": "Martin Acoustic Strings", "text": "martin acoustic guitar strings bronze",
                       "tid": ["acoustic strings", "martin", "bronze"]},
            "predicted_tid": predicted, "instruction": instruction, "parse_status": status}


def test_term_scores_and_shares():
    assert term_scores(["Martin", "steel"], ["martin", "bronze", "acoustic strings"]) == pytest.approx((0.5, 1 / 3, 0.4))
    assert term_scores(None, ["a"]) == (0.0, 0.0, 0.0) and term_scores(["x"], ["y"])[2] == 0.0
    shares = term_shares([["martin", "bronze"], ["bronze"], ["bronze", "pedal"], []])
    assert shares == {"martin": 0.25, "bronze": 0.75, "pedal": 0.25}


def test_leaks_need_the_title_or_a_distinctive_term():
    shares = {"martin": 0.001, "bronze": 0.3}
    assert leaks("A photo of Martin Acoustic Strings on a stand", "Martin Acoustic Strings", [], shares, 0.01)
    assert leaks("Warm light on martin wood", "Some Title", ["martin", "bronze"], shares, 0.01)
    assert not leaks("Warm bronze light", "Some Title", ["martin", "bronze"], shares, 0.01)  # bronze is common
    assert not leaks("Abc", "Abc", [], shares, 0.01)  # titles under 4 characters are not matched


def test_measures_per_user():
    rows = [_row("u1", "Cinematic close-up of bronze guitar strings, warm window light, calm mood.",
                 ["bronze", "martin"]),
            _row("u2", None, None, status="failed")]
    measures = instruction_measures(rows, BagOfWords(), {"martin": 0.001, "bronze": 0.3})
    assert measures["parsed"] == [1.0, 0.0] and measures["has_instruction"] == [1.0, 0.0]
    assert measures["term_precision"][0] == 1.0 and measures["term_recall"][0] == pytest.approx(2 / 3)
    assert measures["relevance"][0] > 0.2 and measures["relevance"][1] == 0.0
    assert measures["leak"] == [0.0, 0.0]
    assert measures["specificity"][0] == pytest.approx(4 / 5)  # style, camera, lighting, mood (calm); no scene
    assert measures["length"] == [11.0, 0.0]
    assert summarise(measures)["parsed"] == 0.5


def test_paired_test_on_synthetic_data():
    rng = np.random.default_rng(0)
    base = rng.normal(size=60)
    assert paired_p_value(base + 0.5 + rng.normal(scale=0.1, size=60), base) < 1e-6
    assert paired_p_value(base, base) == 1.0
    assert paired_p_value(base + rng.normal(scale=1.0, size=60), base) > 0.01


def test_writers_compared_on_shared_users():
    good = [_row(f"u{i}", "Cinematic close-up of bronze acoustic guitar strings, warm light.", ["bronze"])
            for i in range(12)]
    bad = [_row(f"u{i}", "Something nice.", ["steel"]) for i in range(12)] + [_row("extra", "x", ["y"])]
    results = compare_writers({"navigen": [good, good], "vague": [bad]}, BagOfWords(), {}, reference="navigen")
    assert [r.users for r in results] == [12, 12] and results[0].runs == 2
    assert results[1].p_values["relevance"] < 0.01 and results[1].p_values["parsed"] == 1.0
    table = markdown_table(results, "navigen")
    assert "| vague | 1 | 12 |" in table and "± 0.000" in table and "Wilcoxon" in table
    with pytest.raises(KeyError, match="reference writer"):
        compare_writers({"vague": [bad]}, BagOfWords(), {}, reference="navigen")


def test_reference_writers():
    assert history_keywords([["a", "b"], ["b", "c"]], 2) == ["b", "c"]  # b: 0.5 + 1; c: 1; a: 0.5
    rows = [_row("u1", None, None), _row("u2", None, None)]
    first, again = history_keyword_rows(rows), history_keyword_rows(rows)
    assert first == again and first[0]["writer"] == "history_keywords"
    assert "guitar strings" in first[0]["instruction"] and "martin" not in first[0]["instruction"].lower()

    from recbole_navigen.supervision.heuristic import HeuristicTeacher

    taught = teacher_rows(rows, HeuristicTeacher(seed=1), rounds=1, shown=10)
    assert taught[0]["writer"] == "teacher:heuristic" and taught[0]["parse_status"] == "ok"
    assert taught[0]["instruction"] and " I " in f" {taught[0]['reasoning']}"  # first person


def test_media_judge_sends_the_image_and_validates_scores(fake_server, tmp_path):
    from fake_openai import make_client

    from recbole_navigen.evaluation.media_judge import judge_media, parse_judgement

    image = tmp_path / "u1.png"
    image.write_bytes(b"\x89PNG fake bytes")

    def answer(body):
        with_image = isinstance(body["messages"][1]["content"], list)
        if with_image:
            return '{"novelty":0.6,"aesthetics":0.8,"instruction_following":0.9,"personalization":0.7}'
        return "not json at all" if "u3" in body["messages"][1]["content"] else \
            '{"novelty":0.5,"aesthetics":0.4,"personalization":0.3}'

    fake_server.responder = answer
    rows = [_row("u1", "A warm still life.", ["a"]), _row("u2", "Bronze strings.", ["b"]),
            _row("u3", "x", ["c"]), _row("u4", None, None)]
    rows[2]["history"][0]["title"] = "u3"
    scores = judge_media(make_client(fake_server, None), rows, {"u1": image})
    assert scores[0] == {"novelty": 0.6, "aesthetics": 0.8, "instruction_following": 0.9, "personalization": 0.7}
    assert scores[1]["instruction_following"] is None and scores[1]["personalization"] == 0.3
    assert scores[2] is None and scores[3] is None  # a failed answer, and a row without instruction
    sent = [r["body"]["messages"][1]["content"] for r in fake_server.requests]
    assert any(isinstance(c, list) and c[1]["image_url"]["url"].startswith("data:image/png;base64,") for c in sent)
    assert parse_judgement('{"novelty":1.2,"aesthetics":0,"personalization":0}', False) is None


def test_evaluate_instructions_command_writes_the_table(tiny_name, tiny_item_config, tiny_text_encoder, tmp_path,
                                                       capsys, fake_server):
    import json

    import yaml

    import run_recbole_navigen

    rows = [_row(f"u{i}", "Cinematic close-up of bronze strings, warm light." if i % 2 else None,
                 ["bronze"] if i % 2 else None, "ok" if i % 2 else "failed") for i in range(6)]
    generated = tmp_path / "navigen.jsonl"
    generated.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "u1.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "images" / "index.json").write_text(json.dumps({"u1": {"image": "u1.png"}}))
    fake_server.responder = lambda body: (
        '{"novelty":0.5,"aesthetics":0.5,"instruction_following":1.0,"personalization":0.5}'
        if isinstance(body["messages"][1]["content"], list) else '{"novelty":0.2,"aesthetics":0.4,"personalization":0.6}')
    settings = {**tiny_item_config, "text_encoder": tiny_text_encoder, "identifiers_dir": str(tmp_path / "ids"),
                "pretrained_cache_dir": str(tmp_path / "models"), "cid_codebook_size": 8, "kmeans_niter": 5,
                "teacher_base_url": fake_server.base_url, "teacher_api_key_env": None,
                "teacher_cache_dir": str(tmp_path / "cache")}
    config_file = tmp_path / "settings.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    output = tmp_path / "table.md"
    run_recbole_navigen.main(["evaluate-instructions", f"--dataset={tiny_name}", f"--config_files={config_file}",
                              "--inputs", f"navigen={generated},{generated}", "--references=history_keywords,teacher",
                              f"--output={output}", "--judge"])
    table = output.read_text()
    assert "| navigen | 3 | 0 | 1 | 0.300 | 0.433 | 1.000 | 0.567 |" in table  # 3 written, u1 with its image
    assert "| navigen | 2 | 6 |" in table and "| history_keywords | 1 | 6 |" in table
    assert "| teacher:heuristic | 1 | 6 |" in table and "(p " in table
    assert f"Table written to {output}" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="WRITER=FILE"):
        run_recbole_navigen.main(["evaluate-instructions", f"--dataset={tiny_name}", "--inputs", str(generated)])


def test_item_titles_lose_their_field_label():
    from recbole_navigen.generation.instructions import item_title

    assert item_title("movie_title: Mission: Impossible; class: Action") == "Mission: Impossible"
    assert item_title("B000123") == "B000123"  # an item without text: its raw id
