"""Deterministic OpenAI-format answers: the same request always gets the same bytes.

An :class:`Answer` is a status and a sequence of pieces: the SSE events of a
stream, or a JSON body cut into a few slices. Faults that misbehave mid-answer
(drip, truncate, stall) work on pieces, so they apply to streamed and plain
answers alike. Token counts are words: the prompt's whitespace-separated words
and one token per streamed content chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

CREATED = 1_700_000_000
"""The ``created`` timestamp of every answer (deterministic by design)."""
JSON_PIECES = 4
"""How many slices a plain JSON body is cut into for drip, truncate and stall."""
MAX_DIMENSIONS = 4096
DEFAULT_DIMENSIONS = 8
DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
INVALID_JSON = b'{"id": "chatcmpl-fake", "object": "chat.completion", "choices": [{"ind'

_ERROR_KINDS: Mapping[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", None),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    503: ("server_error", "overloaded"),
    529: ("overloaded_error", "overloaded"),
}


@dataclass(frozen=True)
class Answer:
    status: int
    pieces: tuple[bytes, ...]
    stream: bool = False

    @property
    def content_type(self) -> str:
        return "text/event-stream" if self.stream else "application/json"

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)


def sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, with a type and code that fit ``status``."""
    kind, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "api_error", None))
    text = message or f"fake upstream error {status}"
    return {"error": {"message": text, "type": kind, "param": None, "code": code}}


def json_answer(status: int, data: Any) -> Answer:
    return Answer(status, split(orjson.dumps(data), JSON_PIECES))


def split(body: bytes, parts: int) -> tuple[bytes, ...]:
    """``body`` in ``parts`` slices of nearly equal size (fewer when it is shorter)."""
    size = max(1, -(-len(body) // parts))
    return tuple(body[i : i + size] for i in range(0, len(body), size)) or (b"",)


def answer_for(method: str, path: str, raw: bytes, models: Sequence[str]) -> Answer:
    """What a healthy OpenAI-compatible server would answer."""
    if method == "GET" and path == "/v1/models":
        return json_answer(200, model_list(models))
    handler = _POST_ROUTES.get(path)
    if method != "POST" or handler is None:
        return json_answer(404, error_body(404, f"Unknown request URL: {method} {path}"))
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json_answer(400, error_body(400, "the request body is not valid JSON"))
    if not isinstance(body, dict):
        return json_answer(400, error_body(400, "the request body must be a JSON object"))
    return handler(body, _answer_id(raw))


def model_list(models: Sequence[str]) -> dict[str, Any]:
    data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "fakeup"} for m in models]
    return {"object": "list", "data": data}


def _answer_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def _words(model: str, max_tokens: Any) -> tuple[list[str], str]:
    """The answer's content chunks and its finish_reason, honouring ``max_tokens``."""
    words = ["This", " is", " a", " fake", " answer", " from", f" {model}", "."]
    limited = isinstance(max_tokens, int) and not isinstance(max_tokens, bool)
    if limited and 0 < max_tokens < len(words):
        return words[:max_tokens], "length"
    return words, "stop"


def _count_words(value: Any) -> int:
    """Whitespace-separated words in every string inside ``value``."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    if isinstance(value, dict):
        return sum(_count_words(v) for k, v in value.items() if k in ("content", "text"))
    return 0


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# --------------------------------------------------------------------------- chat


def _chat(body: dict[str, Any], ident: str) -> Answer:
    model = str(body.get("model", "fake-model"))
    words, finish = _words(model, body.get("max_tokens", body.get("max_completion_tokens")))
    prompt = max(1, _count_words(body.get("messages", [])))
    if body.get("stream") is True:
        return _stream(_chat_chunks(body, f"chatcmpl-{ident}", model, words, finish, prompt))
    message = {"role": "assistant", "content": "".join(words)}
    return json_answer(
        200,
        {
            "id": f"chatcmpl-{ident}",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _usage(prompt, len(words)),
        },
    )


def _chat_chunks(
    body: dict[str, Any], ident: str, model: str, words: list[str], finish: str, prompt: int
) -> list[dict[str, Any]]:
    head = {"id": ident, "object": "chat.completion.chunk", "created": CREATED, "model": model}
    deltas: list[tuple[dict[str, Any], str | None]] = [({"role": "assistant", "content": ""}, None)]
    deltas += [({"content": word}, None) for word in words]
    deltas.append(({}, finish))
    chunks = [
        {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
        for delta, reason in deltas
    ]
    return _with_usage(body, head, chunks, _usage(prompt, len(words)))


# --------------------------------------------------------------------------- completions


def _completion(body: dict[str, Any], ident: str) -> Answer:
    model = str(body.get("model", "fake-model"))
    words, finish = _words(model, body.get("max_tokens"))
    prompt = max(1, _count_words(body.get("prompt", "")))
    head = {"id": f"cmpl-{ident}", "object": "text_completion", "created": CREATED, "model": model}
    if body.get("stream") is True:
        texts: list[tuple[str, str | None]] = [(w, None) for w in words] + [("", finish)]
        chunks = [
            {**head, "choices": [{"index": 0, "text": t, "finish_reason": r, "logprobs": None}]}
            for t, r in texts
        ]
        return _stream(_with_usage(body, head, chunks, _usage(prompt, len(words))))
    choice = {"index": 0, "text": "".join(words), "finish_reason": finish, "logprobs": None}
    return json_answer(200, {**head, "choices": [choice], "usage": _usage(prompt, len(words))})


# --------------------------------------------------------------------------- embeddings


def _embeddings(body: dict[str, Any], ident: str) -> Answer:
    inputs = body.get("input", "")
    items = inputs if isinstance(inputs, list) and not _is_tokens(inputs) else [inputs]
    dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
    if not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_DIMENSIONS:
        return json_answer(400, error_body(400, f"dimensions must be 1..{MAX_DIMENSIONS}"))
    data = [
        {"object": "embedding", "index": i, "embedding": _vector(item, dimensions)}
        for i, item in enumerate(items)
    ]
    prompt = max(1, sum(_count_words(i) if isinstance(i, str) else len(i) for i in items))
    usage = {"prompt_tokens": prompt, "total_tokens": prompt}
    model = str(body.get("model", "fake-model"))
    return json_answer(200, {"object": "list", "data": data, "model": model, "usage": usage})


def _is_tokens(inputs: list[Any]) -> bool:
    return bool(inputs) and all(isinstance(i, int) for i in inputs)


def _vector(item: Any, dimensions: int) -> list[float]:
    """A unit-free but stable vector: the same input always maps to the same numbers."""
    digest = hashlib.shake_256(orjson.dumps(item)).digest(dimensions)
    return [round(b / 127.5 - 1.0, 4) for b in digest]


# --------------------------------------------------------------------------- streams


def _with_usage(
    body: dict[str, Any],
    head: dict[str, Any],
    chunks: list[dict[str, Any]],
    usage: dict[str, int],
) -> list[dict[str, Any]]:
    """OpenAI's ``stream_options.include_usage``: usage null on every chunk, then a usage chunk."""
    options = body.get("stream_options")
    if not (isinstance(options, dict) and options.get("include_usage") is True):
        return chunks
    return [{**c, "usage": None} for c in chunks] + [{**head, "choices": [], "usage": usage}]


def _stream(chunks: list[dict[str, Any]]) -> Answer:
    return Answer(200, (*(sse(c) for c in chunks), DONE), stream=True)


_POST_ROUTES = {
    "/v1/chat/completions": _chat,
    "/v1/completions": _completion,
    "/v1/embeddings": _embeddings,
}
