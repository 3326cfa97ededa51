"""Stop/finish reason tables, exact in both directions."""

from __future__ import annotations

ANTHROPIC_TO_OPENAI_FINISH: dict[str, str] = {
    "end_turn": "stop",
    "max_tokens": "length",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
    "model_context_window_exceeded": "length",
}

OPENAI_TO_ANTHROPIC_STOP: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def openai_finish_reason(stop_reason: str | None, *, has_tool_calls: bool) -> str:
    """The OpenAI ``finish_reason`` for an Anthropic ``stop_reason``.

    A turn that produced tool calls and ended normally always ends with
    ``tool_calls``, never ``stop``.
    """
    finish = ANTHROPIC_TO_OPENAI_FINISH.get(stop_reason or "end_turn", "stop")
    return "tool_calls" if has_tool_calls and finish == "stop" else finish


def anthropic_stop_reason(finish_reason: str | None, *, has_tool_calls: bool) -> str:
    """The Anthropic ``stop_reason`` for an OpenAI ``finish_reason``."""
    stop = OPENAI_TO_ANTHROPIC_STOP.get(finish_reason or "stop", "end_turn")
    return "tool_use" if has_tool_calls and stop == "end_turn" else stop
