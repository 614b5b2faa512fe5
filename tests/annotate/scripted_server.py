"""The loopback server of tests/openai_server.py with replies scripted per test.

`ScriptedServer(script=f)` is `FakeOpenAIServer` where `f(server, body, handler)` may answer a chat request
itself (and return True); otherwise the request goes to the ordinary fake server. Everything else (the request
log, `GET /models`, latency, faults by marker) is the fake server's own.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from annotate_helpers import FakeOpenAIServer

from openai_server import _target_line, _wants_nested

Script = Callable[["ScriptedServer", dict[str, Any], Any], bool]


class ScriptedServer(FakeOpenAIServer):
    def __init__(self, script: Script | None = None, **options: Any):
        super().__init__(**options)
        self.script = script
        #: every chat request body received, the answer-format probe included
        self.bodies: list[dict[str, Any]] = []

    def handle(self, handler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        body = json.loads(raw)
        with self._lock:
            self.bodies.append(body)
        if self.script is not None and self.script(self, body, handler):
            return None
        handler.rfile = io.BytesIO(raw)  # the fake server reads the body again
        return super().handle(handler)


def utterance_text(body: dict[str, Any]) -> str:
    """The utterance a request asks about ('' for the answer-format probe)."""
    line = _target_line(body.get("messages") or [])
    return line["text"] if line else ""


def answer(body: dict[str, Any], emotion: str = "joy") -> dict[str, Any]:
    """A valid MELT answer for the request's utterance, in the shape the request asks for."""
    line = _target_line(body.get("messages") or []) or {"speaker": "Ross"}
    elements = {"emotion": emotion, "loudness": "moderate", "pitch": "medium", "rhythm_speed": "steady",
                "emotional_impact": "clear"}  # fmt: skip
    reply: dict[str, Any] = {"character": line["speaker"], "context": "a scene"}
    if _wants_nested(body):
        reply["elements"] = elements
    else:
        reply.update(elements)
    return reply


def completion(content: Any, usage: Any = None, **choice: Any) -> dict[str, Any]:
    """A chat completion with `content`; `choice` adds fields to its first choice (e.g. logprobs)."""
    first = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": "stop",
        **choice,
    }
    return {
        "id": "chatcmpl-review",
        "object": "chat.completion",
        "choices": [first],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10} if usage is None else usage,
    }


def send(handler, payload: Any, headers: dict[str, str] | None = None) -> bool:
    handler.send_raw(200, json.dumps(payload).encode(), headers)
    return True


def melt_command(*args: Any) -> list[str]:
    return [sys.executable, "-m", "melt", *map(str, args)]


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", **extra}
