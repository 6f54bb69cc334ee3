"""A fake OpenAI-compatible provider for tests: real HTTP on loopback (tests.receiver.Receiver), real Chat Completions
bodies, answers scripted per request (a reply, a tool call, an error with its headers)."""

from __future__ import annotations

import itertools
import json
from typing import Any

from tests.receiver import Receiver

PATH = "/v1/chat/completions"
MODEL = "fake-model-1"
_ids = itertools.count(1)


class FakeProvider(Receiver):
    """`async with FakeProvider() as model:` serves `model.base_url + "/v1"`; `model.script(completion(...), ...)`."""

    def __init__(self) -> None:
        super().__init__(verify_signatures=False, path=PATH)

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    def bodies(self) -> list[dict[str, Any]]:
        return [r.json for r in self.requests]

    def raw(self) -> bytes:
        """Every byte the provider received: headers and bodies of every request."""
        return b"\n".join(
            b"".join(f"{k}: {v}\n".encode() for k, v in r.headers.items()) + r.body for r in self.requests
        )


def completion(
    text: str | None = None, *tool_calls: dict[str, Any], prompt_tokens: int = 42, completion_tokens: int = 7,
    model: str = MODEL,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A 200 answer: a Chat Completion with `text` and/or tool calls, and its usage."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = list(tool_calls)
    body = {
        "id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": 1_764_000_000, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
    return 200, {}, body


def tool_call(name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    """A function tool call; `arguments` as a dict (sent as the API does, a JSON string) or a raw string."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": f"call_{next(_ids)}", "type": "function", "function": {"name": name, "arguments": raw}}


def error(status: int, code: str = "rate_limit_exceeded", **headers: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    return status, {k.replace("_", "-"): v for k, v in headers.items()}, {
        "error": {"message": "scripted error", "type": "requests", "code": code}}
