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

from modelpool.config.spec import ProviderSpec, Timeouts
from modelpool.errors import UpstreamError, UpstreamStatusError

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


def credentials(spec: ProviderSpec) -> tuple[str, ...]:
    """The provider's secret values: its key and any secret header."""
    secrets = [spec.api_key] if spec.api_key is not None else []
    secrets += [v for v in spec.headers.values() if not isinstance(v, str)]
    return tuple(value for s in secrets if len(value := s.reveal()) >= 4)


def scrub(error: UpstreamError, secrets: tuple[str, ...]) -> UpstreamError:
    """Cut the provider's own credentials out of an upstream error, in place: some
    upstreams echo the key they were sent, and the message goes to clients and logs."""
    for secret in secrets:
        if secret in error.message:
            error.message = error.message.replace(secret, "***")
        if isinstance(error, UpstreamStatusError) and secret.encode() in error.body:
            error.body = error.body.replace(secret.encode(), b"***")
    return error
