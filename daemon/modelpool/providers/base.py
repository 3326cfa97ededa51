"""What every provider adapter offers the orchestrator.

A :class:`Call` is one attempt at one model, already addressed: the body
carries the upstream model name. An adapter sends it and returns an
:class:`UpstreamResponse` once the status is known and the status is a
success, or raises an ``UpstreamError`` describing what happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from modelpool.config.spec import Timeouts

ENDPOINTS = ("chat", "completions", "embeddings", "messages")
Dialect = Literal["openai", "anthropic", "any"]
"""The API a provider speaks; ``any`` (the mock) answers in the format it is asked in."""


@dataclass(frozen=True, slots=True)
class Call:
    endpoint: str
    """One of ENDPOINTS."""
    body: Mapping[str, Any]
    stream: bool
    timeouts: Timeouts
    model: str
    """The model's name in the config, for error messages."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Client headers forwarded to upstreams that understand them."""


class UpstreamResponse(Protocol):
    """A successful upstream answer whose body may still be arriving."""

    status: int
    content_type: str

    async def read(self) -> bytes:
        """The whole body (non-streaming calls)."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (streaming calls)."""
        ...

    def close(self) -> None:
        """Release the upstream connection; aborts it if the body is unread."""
        ...


class Provider(Protocol):
    dialect: Dialect

    async def send(self, call: Call) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...
