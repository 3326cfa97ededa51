"""The fake upstream's healthy answers: deterministic, OpenAI-shaped, with usage."""

from __future__ import annotations

from typing import Any

import orjson

from modelpool.fakeup.answers import DONE, Answer, answer_for, split

MODELS = ("fake-model",)


def post(path: str, body: Any) -> Answer:
    return answer_for("POST", path, orjson.dumps(body), MODELS)


def events(answer: Answer) -> list[Any]:
    assert answer.pieces[-1] == DONE
    return [orjson.loads(piece[6:]) for piece in answer.pieces[:-1]]


def test_the_same_request_gets_the_same_bytes() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    assert post("/v1/chat/completions", body) == post("/v1/chat/completions", body)


def test_prompt_tokens_count_words_in_text_parts() -> None:
    parts = [{"type": "text", "text": "two words"}, {"type": "image_url", "image_url": {}}]
    body = {"model": "m", "messages": [{"role": "user", "content": parts}]}
    usage = orjson.loads(post("/v1/chat/completions", body).body)["usage"]
    assert usage["prompt_tokens"] == 2


def test_streamed_completions_and_their_usage() -> None:
    body = {"model": "m", "prompt": "a b c", "stream": True}
    chunks = events(post("/v1/completions", {**body, "stream_options": {"include_usage": True}}))
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "This is a fake answer from m."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}
    assert all("usage" not in c for c in events(post("/v1/completions", body)))


def test_embeddings_of_tokens_and_bad_dimensions() -> None:
    tokens = orjson.loads(post("/v1/embeddings", {"input": [1, 2, 3]}).body)
    assert len(tokens["data"]) == 1
    assert tokens["usage"]["prompt_tokens"] == 3
    bad = post("/v1/embeddings", {"input": "x", "dimensions": 0})
    assert bad.status == 400


def test_requests_that_are_not_objects_are_400() -> None:
    assert post("/v1/chat/completions", ["not", "an", "object"]).status == 400


def test_json_bodies_are_cut_into_pieces_that_join_back() -> None:
    body = b"0123456789"
    assert split(body, 4) == (b"012", b"345", b"678", b"9")
    assert split(b"", 4) == (b"",)
    answer = post("/v1/embeddings", {"input": "x"})
    assert len(answer.pieces) == 4
    assert orjson.loads(answer.body)["object"] == "list"
