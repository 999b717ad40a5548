"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for the LLM step tests (real HTTP, no mocks).

``POST /v1/chat/completions`` answers from a per-test script and records every request (headers and
body, raw bytes included) so tests can assert on exactly what left paynorm.

    with OpenAIStub() as stub:
        stub.script = lambda req, n: Reply.rule({...})       # or Reply.status(429), Reply.hang(5), ...
        settings.openai_base_url = stub.url
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Reply:
    kind: str  # content | refusal | status | hang | raw (``content`` is the whole HTTP body)
    content: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    tokens_in: int | None = None
    tokens_out: int | None = None

    @classmethod
    def answer(cls, answer: dict[str, Any], **kw: Any) -> "Reply":
        return cls("content", content=json.dumps(answer), **kw)

    @classmethod
    def rule(cls, rule: dict[str, Any], **kw: Any) -> "Reply":
        return cls.answer({"mappable": True, "reason": "", "rule": rule}, **kw)

    @classmethod
    def not_payment(cls, reason: str) -> "Reply":
        return cls.answer({"mappable": False, "reason": reason, "rule": None})

    @classmethod
    def text(cls, content: str) -> "Reply":
        return cls("content", content=content)

    @classmethod
    def refusal(cls, text: str = "I'm sorry, I cannot help with that.") -> "Reply":
        return cls("refusal", content=text)

    @classmethod
    def error(cls, status: int, retry_after: str | None = None) -> "Reply":
        return cls("status", status=status, headers={"retry-after": retry_after} if retry_after else {})

    @classmethod
    def raw(cls, body: str) -> "Reply":
        return cls("raw", content=body)

    @classmethod
    def hang(cls, seconds: float) -> "Reply":
        return cls("hang", seconds=seconds)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    raw: bytes
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.body.get("messages", [])

    @property
    def shape_key(self) -> str | None:
        for m in self.messages:
            found = re.search(r"Shape ([0-9a-f]{16}):", m.get("content") or "")
            if found:
                return found.group(1)
        return None

    @property
    def is_repair(self) -> bool:
        return any(m.get("role") == "assistant" for m in self.messages)


Script = Callable[[Recorded, int], Reply]


def sequence(*replies: Reply) -> Script:
    """Replies in order; the last one repeats."""
    def script(_req: Recorded, n: int) -> Reply:
        return replies[min(n, len(replies) - 1)]
    return script


def by_shape(scripts: dict[str, list[Reply]], default: Reply | None = None) -> Script:
    """Per shape_key (found in the user message), replies in order (the last one repeats)."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def script(req: Recorded, _n: int) -> Reply:
        key = req.shape_key or ""
        with lock:
            i = seen.get(key, 0)
            seen[key] = i + 1
        replies = scripts.get(key)
        if not replies:
            if default is None:
                raise AssertionError(f"stub: no script for shape {key!r}")
            return default
        return replies[min(i, len(replies) - 1)]
    return script


class OpenAIStub:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.script: Script = sequence(Reply.error(500))
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                rec = Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, raw, body)
                with stub._lock:
                    n = len(stub.requests)
                    stub.requests.append(rec)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                try:
                    reply = stub.script(rec, n)
                except Exception as e:  # noqa: BLE001 - a script bug shows up as a 500 the test will see
                    return self._send(500, {"error": {"message": f"stub script error: {e}", "type": "stub"}})
                if reply.kind == "hang":
                    time.sleep(reply.seconds)
                    reply = Reply.error(504)
                if reply.kind == "status":
                    return self._send(reply.status, {"error": {"message": f"scripted {reply.status}",
                                                               "type": "scripted", "code": None}}, reply.headers)
                if reply.kind == "raw":
                    return self._send_bytes(200, (reply.content or "").encode())
                content = None if reply.kind == "refusal" else reply.content
                refusal = reply.content if reply.kind == "refusal" else None
                tokens_in = reply.tokens_in if reply.tokens_in is not None else max(1, len(raw) // 4)
                tokens_out = reply.tokens_out if reply.tokens_out is not None else max(1, len(content or "") // 4)
                self._send(200, {
                    "id": f"chatcmpl-stub{n}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "stub"),
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": content, "refusal": refusal}}],
                    "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                              "total_tokens": tokens_in + tokens_out},
                })

            def _send(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                self._send_bytes(status, json.dumps(obj).encode(), headers)

            def _send_bytes(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="openai-stub", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> "OpenAIStub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self, script: Script | None = None) -> None:
        with self._lock:
            self.requests.clear()
        if script is not None:
            self.script = script

    def __enter__(self) -> "OpenAIStub":
        return self.start()

    def __exit__(self, *_exc: Any) -> None:
        self.stop()

    def raw_text(self) -> str:
        """Every recorded request body, decoded (JSON escapes undone), one after the other."""
        out = []
        for r in self.requests:
            out.append(r.raw.decode("utf-8", "replace"))
            out.append(json.dumps(r.body, ensure_ascii=False))
        return "\n".join(out)
