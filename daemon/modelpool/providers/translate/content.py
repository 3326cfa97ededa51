"""Content pieces: OpenAI content parts ⇄ Anthropic content blocks.

Also the tool-call ⇄ ``tool_use`` conversion and the modelpool extension keys
that carry Anthropic thinking blocks through the OpenAI format.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from modelpool.providers.translate.errors import TranslationError

THINKING_KEY = "modelpool_thinking"
"""Message (and stream delta) key carrying Anthropic thinking blocks verbatim."""
REASONING_KEY = "reasoning_content"
"""Message key carrying the readable thinking text (DeepSeek/vLLM convention)."""
THINKING_TYPES = frozenset({"thinking", "redacted_thinking"})
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_DATA_URL = re.compile(r"^data:(?P<media>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


def dump_json(value: Any) -> str:
    """Compact JSON; the stdlib covers what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _load_json(text: str) -> Any:
    """The stdlib parser: orjson would turn integers beyond 64 bits into floats."""
    return json.loads(text)


def parse_arguments(arguments: Any, param: str) -> dict[str, Any]:
    """OpenAI tool-call ``arguments`` (a JSON string) → Anthropic ``input``."""
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if not isinstance(arguments, str):
        raise TranslationError("tool call arguments must be a JSON string", param)
    try:
        value = _load_json(arguments)
    except ValueError as exc:
        raise TranslationError(f"tool call arguments are not valid JSON: {exc}", param) from exc
    if not isinstance(value, dict):
        raise TranslationError("tool call arguments must be a JSON object", param)
    return value


def tool_call_to_tool_use(call: Mapping[str, Any], param: str) -> dict[str, Any]:
    if call.get("type", "function") != "function":
        raise TranslationError(f"unsupported tool call type {call.get('type')!r}", param)
    function = call.get("function") or {}
    return {
        "type": "tool_use",
        "id": call.get("id") or "",
        "name": function.get("name") or "",
        "input": parse_arguments(function.get("arguments"), f"{param}.function.arguments"),
    }


def tool_use_to_tool_call(block: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": block.get("id") or "",
        "type": "function",
        "function": {
            "name": block.get("name") or "",
            "arguments": dump_json(block.get("input", {})),
        },
    }


def image_part_to_block(part: Mapping[str, Any], param: str) -> dict[str, Any]:
    """OpenAI ``image_url`` part → Anthropic ``image`` block (URL or base64)."""
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str) or not url:
        raise TranslationError("image_url.url must be a non-empty string", f"{param}.image_url.url")
    if not url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.match(url)
    if match is None:
        raise TranslationError("image data URLs must be base64-encoded", f"{param}.image_url.url")
    media = match["media"]
    if media not in IMAGE_MEDIA_TYPES:
        raise TranslationError(f"unsupported image media type {media!r}", f"{param}.image_url.url")
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media, "data": match["data"]},
    }


def image_block_to_part(block: Mapping[str, Any], param: str) -> dict[str, Any]:
    """Anthropic ``image`` block → OpenAI ``image_url`` part."""
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url", "")}}
    if kind == "base64":
        url = f"data:{source.get('media_type', '')};base64,{source.get('data', '')}"
        return {"type": "image_url", "image_url": {"url": url}}
    raise TranslationError(f"unsupported image source type {kind!r}", f"{param}.source.type")


def user_part_to_block(part: Mapping[str, Any], param: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "text":
        block: dict[str, Any] = {"type": "text", "text": part.get("text", "")}
        if "cache_control" in part:
            block["cache_control"] = copy.deepcopy(part["cache_control"])
        return block
    if kind == "image_url":
        return image_part_to_block(part, param)
    raise TranslationError(f"unsupported content part type {kind!r}", f"{param}.type")


def user_block_to_part(block: Mapping[str, Any], param: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text", "")}
    if kind == "image":
        return image_block_to_part(block, param)
    raise TranslationError(f"unsupported content block type {kind!r}", f"{param}.type")


def text_of_parts(content: Any, param: str) -> list[str]:
    """The texts of a content that may only hold text (system, tool, assistant)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, Sequence):
        raise TranslationError("content must be a string or a list of parts", param)
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind not in ("text", "refusal"):
            raise TranslationError(
                f"only text content is supported here, not {kind!r}", f"{param}[{i}].type"
            )
        texts.append(part.get("text", part.get("refusal", "")))
    return texts


def thinking_blocks(message: Mapping[str, Any], param: str) -> list[dict[str, Any]]:
    """The verbatim Anthropic thinking blocks carried by an OpenAI message."""
    blocks = message.get(THINKING_KEY)
    if blocks is None:
        return []
    if not isinstance(blocks, Sequence) or any(
        not isinstance(b, Mapping) or b.get("type") not in THINKING_TYPES for b in blocks
    ):
        raise TranslationError("must be a list of thinking blocks", f"{param}.{THINKING_KEY}")
    return [copy.deepcopy(dict(b)) for b in blocks]


def carry_thinking(target: dict[str, Any], blocks: Sequence[Mapping[str, Any]]) -> None:
    """Put Anthropic thinking blocks on an OpenAI message, verbatim."""
    if not blocks:
        return
    target[REASONING_KEY] = "".join(
        b.get("thinking", "") for b in blocks if b.get("type") == "thinking"
    )
    target[THINKING_KEY] = [copy.deepcopy(dict(b)) for b in blocks]
