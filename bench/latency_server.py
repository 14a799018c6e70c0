"""A fake OpenAI-compatible chat-completions server on 127.0.0.1, with an optional fixed latency per request:
the tests' stand-in for a teacher LLM (tests/fake_openai.py) and the benchmarks' (bench/supervision.py).

`supervision_answer` answers every request of the supervision pipeline with valid JSON, recognising the
step from the system prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from recbole_navigen.supervision.prompts import step_of


@dataclass(frozen=True)
class Delay:
    """A script step: stall this long, then answer as the responder says."""

    seconds: float


Step = str | int | Delay  # answer text, HTTP error status, or a stall


class FakeOpenAI:
    """What the fake server answers: `script` steps first (one per request), then `responder(body)`; every
    request waits `latency` seconds first."""

    def __init__(self, latency: float = 0.0) -> None:
        self.base_url = ""
        self.latency = latency
        self.requests: list[dict] = []
        self.script: list[Step] = []
        self.responder: Callable[[dict], str | int] = lambda body: '{"answer": "ok"}'
        self._lock = threading.Lock()

    def handle(self, headers: dict, body: dict) -> tuple[int, str]:
        with self._lock:
            self.requests.append({"headers": headers, "body": body})
            step = self.script.pop(0) if self.script else None
        if self.latency:
            time.sleep(self.latency)
        if isinstance(step, Delay):
            time.sleep(step.seconds)
            step = None
        answer = self.responder(body) if step is None else step
        return (answer, "") if isinstance(answer, int) else (200, answer)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, text = self.server.fake.handle({k.lower(): v for k, v in self.headers.items()}, body)
        if self.path != "/v1/chat/completions":
            status = 404
        if status == 200:
            payload = {
                "id": "fake",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            }
        else:  # echo the Authorization header, as a careless server might, to prove the client redacts it
            payload = {"error": {"message": f"failed for {self.headers.get('Authorization')}", "type": "fake"}}
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left

    def log_message(self, *args) -> None:
        pass


def start_server(latency: float = 0.0) -> tuple[FakeOpenAI, Callable[[], None]]:
    """A fake OpenAI-compatible server on 127.0.0.1 (a free port) and the function that stops it."""
    fake = FakeOpenAI(latency)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.fake = fake
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return fake, stop


_TARGET = re.compile(r"^Target TID:\n(.*)$", re.MULTILINE)
_CANDIDATE = re.compile(r"^Candidate (\d+):$", re.MULTILINE)


def _score(text: str, salt: str) -> float:
    """A stable pseudo-score in [5, 9.5] for a text."""
    return 5 + int(hashlib.sha256(f"{salt}:{text}".encode()).hexdigest()[:4], 16) % 10 / 2


def supervision_answer(body: dict) -> str:
    """A valid answer to any supervision request (steps 1-3), derived from its messages only."""
    system, user = body["messages"][0]["content"], body["messages"][1]["content"]
    step = step_of(system)
    target = _TARGET.search(user).group(1) if _TARGET.search(user) else "the target"
    tag = hashlib.sha256(user.encode()).hexdigest()[:6]
    if step == "step1":
        return json.dumps({"reasoning": f"I see a steady thread in my history ({tag}). I conclude with {target}."})
    if step == "founders":
        return json.dumps({"candidates": [
            {"strategy": name, "prompt": f"A {name} studio scene, soft light, close-up, calm mood ({tag})",
             "reasoning": f"{name} take"} for name in ("conservative", "balanced", "exploratory")]})
    if step == "score":
        candidates = _CANDIDATE.findall(user)
        prompts = re.split(r"^Candidate \d+:$", user, flags=re.MULTILINE)[1:]
        return json.dumps({"scores": [
            {"id": int(number), **{name: _score(prompt, name) for name in
                                   ("consistency", "novelty", "aesthetic", "executability")}, "reasoning": "fine"}
            for number, prompt in zip(candidates, prompts)]})
    if step == "children":
        return json.dumps({kind: {"prompt": f"A {kind} of both drafts, golden light, wide shot ({tag})",
                                  "reasoning": f"{kind} child"} for kind in ("crossover", "mutation")})
    if step == "step3":
        return json.dumps({"reasoning": f"I read my history, compared the drafts and kept the best ({tag}). "
                                        f"I would write the final instruction around {target}."})
    return '{"answer": "ok"}'
