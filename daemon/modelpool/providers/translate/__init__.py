"""Pure OpenAI chat ⇄ Anthropic messages translation: requests, responses, streams.

No I/O here: every function takes parsed JSON (dicts) and returns dicts. What
cannot be expressed in the target API raises :class:`TranslationError`.
"""

from modelpool.providers.translate.content import REASONING_KEY, THINKING_KEY
from modelpool.providers.translate.errors import TranslationError
from modelpool.providers.translate.reasons import (
    ANTHROPIC_TO_OPENAI_FINISH,
    OPENAI_TO_ANTHROPIC_STOP,
    anthropic_stop_reason,
    openai_finish_reason,
)
from modelpool.providers.translate.requests import (
    DEFAULT_MAX_TOKENS,
    anthropic_to_openai_chat,
    openai_chat_to_anthropic,
    strip_modelpool_extensions,
)
from modelpool.providers.translate.responses import (
    ANTHROPIC_ERROR_TYPES,
    anthropic_error_to_openai,
    anthropic_message_to_openai,
    openai_completion_to_anthropic,
    openai_error_to_anthropic,
)
from modelpool.providers.translate.streams import AnthropicToOpenAIStream, OpenAIToAnthropicStream
from modelpool.providers.translate.usage import (
    Usage,
    merge_anthropic_delta_usage,
    usage_from_anthropic,
    usage_from_openai,
    usage_to_anthropic,
    usage_to_openai,
)

__all__ = [
    "ANTHROPIC_ERROR_TYPES",
    "ANTHROPIC_TO_OPENAI_FINISH",
    "DEFAULT_MAX_TOKENS",
    "OPENAI_TO_ANTHROPIC_STOP",
    "REASONING_KEY",
    "THINKING_KEY",
    "AnthropicToOpenAIStream",
    "OpenAIToAnthropicStream",
    "TranslationError",
    "Usage",
    "anthropic_error_to_openai",
    "anthropic_message_to_openai",
    "anthropic_stop_reason",
    "anthropic_to_openai_chat",
    "merge_anthropic_delta_usage",
    "openai_chat_to_anthropic",
    "openai_completion_to_anthropic",
    "openai_error_to_anthropic",
    "openai_finish_reason",
    "strip_modelpool_extensions",
    "usage_from_anthropic",
    "usage_from_openai",
    "usage_to_anthropic",
    "usage_to_openai",
]
