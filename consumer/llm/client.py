"""The OpenAI-compatible endpoint: one request through the official ``openai`` client, the answer
treated as untrusted input (bounded size and depth, usage figures checked), the call budget."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from ..settings import Settings
from .prompt import estimate_tokens

__all__ = ["MAX_ANSWER_CHARS", "MAX_ANSWER_DEPTH", "MAX_REPORTED_TOKENS", "RETRYABLE", "CallResult", "Budget",
           "make_client", "one_request", "parse_answer"]

RETRYABLE = ("rate_limited", "server_error", "timeout", "connection_error")


MAX_ANSWER_CHARS = 200_000  # a mapping rule is a few kB: anything larger is not an answer
MAX_ANSWER_DEPTH = 24  # nesting of the answer object (a rule is ~6 deep)
MAX_REPORTED_TOKENS = 10_000_000  # per request; above (or negative) the usage is not believable


def _tokens(value: Any) -> tuple[int | None, bool]:
    """(token count, believable): an endpoint's usage figure is untrusted input."""
    if value is None:
        return None, True
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPORTED_TOKENS:
        return None, False
    return value, True


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests deeper than ``limit`` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return False


# -- calling the endpoint -----------------------------------------------------------------------------


@dataclass
class CallResult:
    outcome: str  # ok | malformed | rate_limited | server_error | timeout | connection_error | http_error
    content: str | None = None
    refusal: str | None = None
    finish_reason: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_ms: int = 0
    error: str | None = None
    retry_after: float | None = None
    attempt: int = 1


def make_client(settings: Settings) -> Any:
    from openai import OpenAI

    for name in ("openai", "httpx", "httpcore"):  # their DEBUG logs dump requests; the key must never be logged
        lg = logging.getLogger(name)
        if lg.getEffectiveLevel() < logging.INFO:
            lg.setLevel(logging.INFO)
    return OpenAI(api_key=settings.openai_api_key, base_url=settings.openai_base_url or None,
                  timeout=settings.llm_timeout, max_retries=0)


def one_request(client: Any, request: dict[str, Any], key: str) -> CallResult:
    import openai

    t0 = time.monotonic()

    def done(**kw: Any) -> CallResult:
        res = CallResult(latency_ms=int((time.monotonic() - t0) * 1000), **kw)
        if res.error and key:
            res.error = res.error.replace(key, "***")
        return res

    try:
        resp = client.chat.completions.create(**request)
    except openai.APITimeoutError as e:
        return done(outcome="timeout", error=f"timeout: {e}")
    except openai.APIConnectionError as e:
        return done(outcome="connection_error", error=f"connection error: {e}")
    except openai.APIStatusError as e:
        ra = None
        try:
            ra = float(e.response.headers.get("retry-after", ""))
        except (ValueError, AttributeError, TypeError):
            pass
        kind = "rate_limited" if e.status_code == 429 else "server_error" if e.status_code >= 500 else "http_error"
        return done(outcome=kind, error=f"HTTP {e.status_code}: {str(e)[:500]}", retry_after=ra)
    except openai.OpenAIError as e:
        return done(outcome="http_error", error=f"{type(e).__name__}: {str(e)[:500]}")
    except (RecursionError, ValueError, TypeError, AttributeError) as e:
        # the client could not even read the body (nested 200k levels deep, not JSON, wrong types):
        # an answer like that is malformed, recorded like any other, never an exception of the step
        return done(outcome="malformed", error=f"the answer could not be read: {type(e).__name__}: {str(e)[:200]}")
    try:
        choice = resp.choices[0] if getattr(resp, "choices", None) else None
        msg = choice.message if choice is not None else None
        usage = getattr(resp, "usage", None)
        content, refusal = getattr(msg, "content", None), getattr(msg, "refusal", None)
        finish = getattr(choice, "finish_reason", None)
        tin, ok_in = _tokens(getattr(usage, "prompt_tokens", None))
        tout, ok_out = _tokens(getattr(usage, "completion_tokens", None))
    except Exception as e:  # noqa: BLE001 - an odd response object is a malformed answer
        return done(outcome="malformed", error=f"the answer could not be read: {type(e).__name__}")
    if not (ok_in and ok_out):
        return done(outcome="malformed", content=content if isinstance(content, str) else None,
                    error="the answer's token counts are negative or not believable (usage is untrusted input)")
    if content is not None and not isinstance(content, str) or refusal is not None and not isinstance(refusal, str):
        return done(outcome="malformed", error="the answer's content is not text")
    return done(outcome="ok", content=content, refusal=refusal, finish_reason=finish, tokens_in=tin, tokens_out=tout)


class Budget:
    def __init__(self, max_calls: int, max_tokens: int) -> None:
        self.max_calls, self.max_tokens = max_calls, max_tokens
        self.calls = self.tokens_in = self.tokens_out = 0
        self.stop: str | None = None

    def allows(self, request: dict[str, Any]) -> bool:
        if self.calls >= self.max_calls:
            self.stop = self.stop or "max_calls"
            return False
        if self.tokens_in + self.tokens_out + estimate_tokens(request) > self.max_tokens:
            self.stop = self.stop or "max_tokens"
            return False
        return True

    def spend(self, res: CallResult, request: dict[str, Any]) -> None:
        """Count a request: at least what was sent (and received), whatever usage the endpoint claims."""
        self.calls += 1
        sent = len(json.dumps(request)) // 4
        received = len(res.content or "") // 4
        self.tokens_in += max(res.tokens_in or 0, sent)
        self.tokens_out += max(res.tokens_out or 0, received)


def parse_answer(res: CallResult) -> tuple[str, dict[str, Any] | None, str | None]:
    """(outcome, answer, error): outcome ok | refusal | malformed. Never raises: the answer is
    untrusted input (bounded size and depth, any parse problem is `malformed`)."""
    if res.outcome == "malformed":
        return "malformed", None, res.error or "the answer could not be read"
    if res.refusal:
        return "refusal", None, f"the model refused: {res.refusal[:500]}"
    if res.finish_reason == "length":
        return "malformed", None, "the answer was cut at max_completion_tokens (not complete JSON)"
    if not res.content:
        return "malformed", None, "the answer is empty"
    if len(res.content) > MAX_ANSWER_CHARS:
        return "malformed", None, f"the answer is larger than {MAX_ANSWER_CHARS} characters"
    try:
        answer = json.loads(res.content)
    except RecursionError:
        return "malformed", None, f"the answer nests deeper than {MAX_ANSWER_DEPTH} levels"
    except ValueError as e:
        return "malformed", None, f"the answer is not valid JSON ({e}); answer with the JSON object of the schema"
    if _depth_exceeds(answer, MAX_ANSWER_DEPTH):
        return "malformed", None, f"the answer nests deeper than {MAX_ANSWER_DEPTH} levels"
    if not isinstance(answer, dict) or "mappable" not in answer:
        return "malformed", None, "the answer is not the object of the response schema (mappable, reason, rule)"
    return "ok", answer, None
