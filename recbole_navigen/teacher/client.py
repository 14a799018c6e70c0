"""The teacher-LLM client: one `chat` call over an OpenAI-compatible server or a local Hugging Face causal LM,
with per-request timeouts, retries with backoff, an on-disk response cache and token accounting."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from recbole_navigen.fileio import write_text_atomic
from recbole_navigen.llm.pretrained import resolve_pretrained

logger = logging.getLogger(__name__)

Messages = Sequence[Mapping[str, str]]

CONFIG_KEYS = (
    "teacher_backend",
    "teacher_base_url",
    "teacher_model",
    "teacher_api_key_env",
    "teacher_timeout",
    "teacher_max_retries",
    "teacher_retry_base_delay",
    "teacher_concurrency",
    "teacher_cache_dir",
    "teacher_max_new_tokens",
    "teacher_temperature",
)
# Servers that need no key (vLLM, Ollama) still make the openai client send one.
KEYLESS_API_KEY = "EMPTY"
# HTTP statuses worth another try; other 4xx answers would fail the same way again.
_RETRY_STATUSES = {408, 409, 429}


@dataclass(frozen=True)
class ChatResult:
    """One answer: its text, whether it came from the cache, and its token usage."""

    text: str
    cached: bool
    usage: dict[str, int] = field(default_factory=dict)


class TeacherError(RuntimeError):
    """A request that failed for good; its message never holds the API key."""


class _Backend(Protocol):
    def complete(self, messages: Messages, params: dict[str, Any]) -> tuple[str, dict[str, int]]: ...

    def is_retryable(self, error: Exception) -> bool: ...

    def redact(self, text: str) -> str: ...


class _OpenAIBackend:
    """Chat completions on any OpenAI-compatible server (vLLM, Ollama, OpenAI)."""

    def __init__(self, base_url: str | None, model: str, api_key_env: str | None, timeout: float) -> None:
        import openai

        self._openai = openai
        self.model = model
        self.api_key_env = api_key_env
        # Retries are ours (counted, logged, with jitter), so the openai client's own are off.
        self._client = openai.OpenAI(api_key=KEYLESS_API_KEY, base_url=base_url, timeout=timeout, max_retries=0)

    def _api_key(self) -> str:
        """The key, read from its environment variable at call time."""
        if self.api_key_env is None:
            return KEYLESS_API_KEY
        key = os.environ.get(self.api_key_env)
        if not key:
            raise TeacherError(
                f"environment variable {self.api_key_env!r} (teacher_api_key_env) holding the teacher's API key "
                "is not set"
            )
        return key

    def complete(self, messages: Messages, params: dict[str, Any]) -> tuple[str, dict[str, int]]:
        params = dict(params)
        params["max_tokens"] = params.pop("max_new_tokens")
        client = self._client.with_options(api_key=self._api_key())  # shares the connection pool
        response = client.chat.completions.create(model=self.model, messages=list(messages), **params)
        usage = response.usage
        counts = {
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
        }
        return response.choices[0].message.content or "", counts

    def is_retryable(self, error: Exception) -> bool:
        if isinstance(error, self._openai.APIStatusError):
            return error.status_code in _RETRY_STATUSES or error.status_code >= 500
        # Timeouts, refused connections, unreadable answers.
        return isinstance(error, self._openai.APIError)

    def redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "***") if key else text


class _HFBackend:
    """Greedy decoding with a local Hugging Face causal LM through its chat template; loaded on first use."""

    _PARAMS = {"max_new_tokens", "temperature"}

    def __init__(self, model: str, pretrained_dir: Path, timeout: float) -> None:
        self.model_name = model
        self.pretrained_dir = pretrained_dir
        self.timeout = timeout
        self._loaded: tuple[Any, Any] | None = None
        # One generate at a time: threads would only contend for the same CPU cores and weights.
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = resolve_pretrained(self.model_name, self.pretrained_dir)
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path).eval()
            self._loaded = (tokenizer, model)
        return self._loaded

    def complete(self, messages: Messages, params: dict[str, Any]) -> tuple[str, dict[str, int]]:
        import torch

        unknown = set(params) - self._PARAMS
        if unknown:
            raise TeacherError(f"the hf teacher backend does not take {sorted(unknown)}")
        with self._lock:
            tokenizer, model = self._load()
            inputs = tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            with torch.inference_mode():
                # Greedy, so temperature is moot; max_time is the per-request timeout (stops, keeps the text).
                output = model.generate(
                    **inputs,
                    do_sample=False,
                    max_new_tokens=params["max_new_tokens"],
                    max_time=self.timeout,
                    pad_token_id=pad,
                )
        prompt_length = inputs["input_ids"].shape[1]
        generated = output[0, prompt_length:]
        text = tokenizer.decode(generated, skip_special_tokens=True)
        return text, {"prompt_tokens": int(prompt_length), "completion_tokens": int(generated.shape[0])}

    def is_retryable(self, error: Exception) -> bool:
        return False  # local generation fails the same way every time

    def redact(self, text: str) -> str:
        return text


class TeacherClient:
    """Chat with a teacher LLM (`backend` "openai" or "hf") with retries, a response cache and accounting.

    `stats`: `calls` (chat requests), `cache_hits`, `retries` (extra attempts), `errors` (requests that failed
    for good), `prompt_tokens` and `completion_tokens` (spent on live answers only).
    """

    def __init__(
        self,
        *,
        backend: str,
        model: str,
        base_url: str | None,
        api_key_env: str | None,
        timeout: float,
        max_retries: int,
        retry_base_delay: float,
        concurrency: int,
        cache_dir: str | os.PathLike | None,
        max_new_tokens: int,
        temperature: float,
        pretrained_dir: str | os.PathLike | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`cache_dir=None` disables the response cache; `pretrained_dir` (default `<cache_dir>/pretrained`)
        holds offline model aliases converted for the hf backend."""
        self.backend_name = backend
        self.model = model
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.concurrency = concurrency
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.defaults = {"max_new_tokens": max_new_tokens, "temperature": temperature}
        self._sleep = sleep
        self._backend = self._make_backend(backend, model, base_url, api_key_env, timeout, pretrained_dir)
        self._stats = dict.fromkeys(
            ("calls", "cache_hits", "retries", "errors", "prompt_tokens", "completion_tokens"), 0
        )
        self._stats_lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def _make_backend(
        self,
        backend: str,
        model: str,
        base_url: str | None,
        api_key_env: str | None,
        timeout: float,
        pretrained_dir: str | os.PathLike | None,
    ) -> _Backend:
        if backend == "openai":
            return _OpenAIBackend(base_url, model, api_key_env, timeout)
        if backend == "hf":
            if pretrained_dir is None:
                if self.cache_dir is None:
                    raise ValueError("the hf teacher backend needs a cache_dir or a pretrained_dir")
                pretrained_dir = self.cache_dir / "pretrained"
            return _HFBackend(model, Path(pretrained_dir), timeout)
        raise ValueError(f"unknown teacher backend {backend!r}: use 'openai' or 'hf'")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> TeacherClient:
        """A client from the `teacher_*` keys of a config, every one required (defaults live in YAML);
        `overrides` go to the constructor as they are (`pretrained_dir`, `sleep`)."""
        for key in CONFIG_KEYS:
            if key not in config:  # `in`, because a RecBole Config answers None for a missing key
                raise KeyError(f"teacher config lacks {key!r}")
        settings = {key.removeprefix("teacher_"): config[key] for key in CONFIG_KEYS}
        if "pretrained_cache_dir" in config:  # where aliases such as smollm2-135m are converted to
            settings["pretrained_dir"] = config["pretrained_cache_dir"]
        return cls(**{**settings, **overrides})

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the call and token counters."""
        with self._stats_lock:
            return dict(self._stats)

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for name, value in increments.items():
                self._stats[name] += value

    def cache_key(self, messages: Messages, params: Mapping[str, Any]) -> str:
        """sha256 of everything that decides the answer: backend, model, messages and generation params."""
        request = {
            "backend": self.backend_name,
            "model": self.model,
            "messages": [dict(message) for message in messages],
            "params": dict(params),
        }
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def chat(self, messages: Messages, **params: Any) -> ChatResult:
        """The teacher's answer to `messages`; `params` override the default generation settings."""
        params = {**self.defaults, **params}
        self._count(calls=1)
        if self.cache_dir is None:
            return self._live(messages, params)
        key = self.cache_key(messages, params)
        with self._stats_lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        # One request per key at a time: a twin request waits for the answer instead of asking again,
        # and two threads never write the same cache file.
        with key_lock:
            cache_file = self.cache_dir / f"{key}.json"
            if cache_file.is_file():
                entry = json.loads(cache_file.read_text(encoding="utf-8"))
                self._count(cache_hits=1)
                return ChatResult(entry["text"], True, entry["usage"])
            result = self._live(messages, params)
            write_text_atomic(cache_file, json.dumps({"text": result.text, "usage": result.usage}, ensure_ascii=False))
        return result

    def _live(self, messages: Messages, params: dict[str, Any]) -> ChatResult:
        text, usage = self._complete_with_retries(messages, params)
        self._count(**usage)
        return ChatResult(text, False, usage)

    def _complete_with_retries(self, messages: Messages, params: dict[str, Any]) -> tuple[str, dict[str, int]]:
        attempt = 0
        while True:
            try:
                return self._backend.complete(messages, params)
            except TeacherError:
                self._count(errors=1)
                raise
            except Exception as error:
                reason = self._backend.redact(f"{type(error).__name__}: {error}")
                if attempt == self.max_retries or not self._backend.is_retryable(error):
                    self._count(errors=1)
                    # `from None`: the chained error carries the request, Authorization header included.
                    raise TeacherError(f"teacher request failed after {attempt + 1} attempt(s): {reason}") from None
                # Exponential backoff with jitter, so concurrent workers do not retry in lockstep.
                delay = self.retry_base_delay * 2**attempt * random.uniform(0.5, 1.5)
                attempt += 1
                logger.warning(
                    "teacher request failed (%s); retry %d/%d in %.2fs", reason, attempt, self.max_retries, delay
                )
                self._count(retries=1)
                self._sleep(delay)

    def chat_many(
        self,
        conversations: Sequence[Messages],
        desc: str = "teacher",
        on_result: Callable[[int, ChatResult | Exception], None] | None = None,
        **params: Any,
    ) -> list[ChatResult | Exception]:
        """Answers in input order, at most `concurrency` requests in flight; a failed request yields its exception.

        `on_result(index, result)` runs in the calling thread as each one finishes (for incremental saving).
        """
        results: list[ChatResult | Exception | None] = [None] * len(conversations)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self.chat, messages, **params): i for i, messages in enumerate(conversations)}
            for future in tqdm(as_completed(futures), total=len(futures), desc=desc):
                index = futures[future]
                error = future.exception()
                results[index] = future.result() if error is None else error
                if on_result is not None:
                    on_result(index, results[index])
        return results
