"""A fake OpenAI-compatible chat-completions server for tests, and a client wired to it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from recbole_navigen.teacher.client import TeacherClient


@dataclass(frozen=True)
class Delay:
    """A script step: stall this long, then answer as the responder says."""

    seconds: float


Step = str | int | Delay  # answer text, HTTP error status, or a stall


class FakeOpenAI:
    """What the fake server answers: `script` steps first (one per request), then `responder(body)`."""

    def __init__(self) -> None:
        self.base_url = ""
        self.requests: list[dict] = []
        self.script: list[Step] = []
        self.responder: Callable[[dict], str | int] = lambda body: '{"answer": "ok"}'
        self._lock = threading.Lock()

    def handle(self, headers: dict, body: dict) -> tuple[int, str]:
        with self._lock:
            self.requests.append({"headers": headers, "body": body})
            step = self.script.pop(0) if self.script else None
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


def start_server() -> tuple[FakeOpenAI, Callable[[], None]]:
    """A fake OpenAI-compatible server on 127.0.0.1 (a free port) and the function that stops it."""
    fake = FakeOpenAI()
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


def make_client(fake: FakeOpenAI, cache_dir: Path | None, **overrides) -> TeacherClient:
    """An openai-backend client on the fake server, fast retries, sleeps recorded in `client.sleeps`."""
    sleeps: list[float] = []
    settings = {
        "backend": "openai",
        "model": "fake-teacher",
        "base_url": fake.base_url,
        "api_key_env": None,
        "timeout": 5.0,
        "max_retries": 2,
        "retry_base_delay": 0.01,
        "concurrency": 2,
        "cache_dir": cache_dir,
        "max_new_tokens": 32,
        "temperature": 0.0,
        "sleep": sleeps.append,
    }
    client = TeacherClient(**{**settings, **overrides})
    client.sleeps = sleeps
    return client
