"""The error taxonomy of modelpool, in one place.

Every failure the daemon knows how to handle is one of these classes; the
HTTP edge (``modelpool.api_errors``) is the only place that turns them into a
client-visible response, and ``modelpool.dispatch`` is the only place that
decides whether one is worth another attempt.

::

    ModelpoolError
    ├── ConfigError                 the config cannot become a routing table
    │                               (carries every ConfigIssue found, not just the first)
    ├── RequestError                the client's request is wrong; never retried
    │   ├── BadRequest              400: malformed JSON, wrong types, missing fields
    │   ├── Unauthorized            401: no or unknown client key (when clients are configured)
    │   ├── Forbidden               403: the client may not use that pool
    │   ├── RouteNotFound           404: no pool or model of that name
    │   ├── RequestTimeout          408: the body did not arrive in time (slow client)
    │   └── PayloadTooLarge         413: body over server.max_body_bytes
    ├── RoutingError                modelpool could not find an upstream to serve
    │   ├── NoCapacity              429: every member is limited (carries retry_after)
    │   ├── BudgetExceeded          429 (or 402): a client's or pool's budget is used up
    │   │                           until its period resets (carries retry_after)
    │   ├── ShuttingDown            503: the daemon is draining (carries retry_after)
    │   ├── SharedStateUnavailable  503: Redis is down and shared_state fails closed
    │   ├── AllDown                 503 (429 if only rate-limited) at once: every member's
    │   │                           breaker is open; Retry-After = the earliest reopening
    │   └── AllAttemptsFailed       502/503/504: every attempt failed (keeps them all)
    └── UpstreamError               one attempt at one model failed
        ├── UpstreamConnectError    could not connect (refused, DNS, TLS, connect timeout)
        ├── UpstreamTimeout         no first byte in time / stream idle / total deadline
        ├── UpstreamStatusError     the upstream answered with a non-2xx status
        └── UpstreamStreamBroken    the upstream broke a response after it had started

Transport code raises ``UpstreamError`` subclasses and states facts (status,
phase, Retry-After); it never decides what is retryable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class ModelpoolError(Exception):
    """Base of every error modelpool raises on purpose."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file, located as precisely as we can."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(ModelpoolError):
    """The config is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


# --------------------------------------------------------------------------- request


class RequestError(ModelpoolError):
    """The client's request cannot be served as sent. Never retried."""

    status = 400
    code = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(RequestError):
    status = 400


class ContextTooLong(BadRequest):
    """The prompt is larger than the context window of every model that could serve it."""

    code = "context_length_exceeded"


class RequestTimeout(RequestError):
    status = 408
    code = "request_timeout"


class Unauthorized(RequestError):
    status = 401
    code = "invalid_api_key"


class Forbidden(RequestError):
    status = 403
    code = "pool_not_allowed"


class RouteNotFound(RequestError):
    status = 404
    code = "model_not_found"


class PayloadTooLarge(RequestError):
    status = 413
    code = "request_too_large"


# --------------------------------------------------------------------------- upstream


class UpstreamError(ModelpoolError):
    """One attempt at one model failed. ``model`` names the model tried."""

    def __init__(self, message: str, *, model: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.model = model


class UpstreamConnectError(UpstreamError):
    """No connection could be made (refused, reset before response, DNS, TLS, timeout)."""


class UpstreamTimeout(UpstreamError):
    """A deadline passed; ``phase`` is ``first_byte``, ``idle`` or ``total``."""

    def __init__(self, message: str, *, phase: str, model: str = "") -> None:
        super().__init__(message, model=model)
        self.phase = phase


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status; ``body`` is its raw answer."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body: bytes = b"",
        retry_after: float | None = None,
        model: str = "",
    ) -> None:
        super().__init__(message, model=model)
        self.status = status
        self.body = body
        self.retry_after = retry_after


class UpstreamStreamBroken(UpstreamError):
    """The upstream broke off a response that had already started."""


# --------------------------------------------------------------------------- routing


class RoutingError(ModelpoolError):
    """No upstream could serve the request."""

    status = 503
    code = "service_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoCapacity(RoutingError):
    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BudgetExceeded(RoutingError):
    """A client's or pool's budget for the period is used up."""

    code = "budget_exceeded"

    def __init__(self, message: str, *, status: int, retry_after: float) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ShuttingDown(RoutingError):
    """The daemon is draining after SIGTERM: no new requests."""

    code = "shutting_down"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SharedStateUnavailable(RoutingError):
    """Redis is down and ``shared_state.on_failure`` is fail_closed."""

    code = "shared_state_unavailable"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AllDown(RoutingError):
    """No member could be tried: every breaker is open (or cooling after a 429)."""

    def __init__(
        self, message: str, *, retry_after: float, rate_limited: bool, attempts: int = 0
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.attempts = attempts
        if rate_limited:
            self.status, self.code = 429, "rate_limit_exceeded"
        else:
            self.status, self.code = 503, "all_upstreams_down"


class AllAttemptsFailed(RoutingError):
    """Every attempt failed; the status follows the first failure's kind."""

    def __init__(
        self, attempts: Sequence[UpstreamError], *, retry_after: float | None = None
    ) -> None:
        self.attempts = tuple(attempts)
        first = self.attempts[0] if self.attempts else None
        n = len(self.attempts)
        detail = f"; first error: {first.message}" if first else ""
        super().__init__(f"all {n} attempt{'s' if n != 1 else ''} failed{detail}")
        self.status, self.code = _status_for(first)
        upstream = first.retry_after if isinstance(first, UpstreamStatusError) else None
        self.retry_after = upstream if upstream is not None else retry_after


def _status_for(first: UpstreamError | None) -> tuple[int, str]:
    if isinstance(first, UpstreamTimeout):
        return 504, "upstream_timeout"
    if isinstance(first, UpstreamConnectError) or first is None:
        return 503, "upstream_unavailable"
    if isinstance(first, UpstreamStatusError) and first.status == 429:
        return 429, "rate_limit_exceeded"
    return 502, "upstream_error"
