"""Schemathesis against the real daemon, from the OpenAPI document it serves.

The document is loaded from the package at collection (schemathesis builds one
test per operation then, before any daemon runs) and the first test holds the
daemon to serving exactly those bytes at GET /openapi.json.

The daemon runs the offline example (a dead Ollama first, the built-in mock
after it), so every upstream that can answer does. For each operation of the
document schemathesis sends examples, boundary cases and random requests,
valid and invalid, and checks that the answer is documented: its status, its
content type, its headers and its body's schema; that invalid input is
refused; and that a method the path lacks gets 405 with Allow.

A 5xx passes only when it is an upstream's failure, reported as such: 502/503/
504 carrying ``x-modelpool-attempts`` (the offline example's Ollama is down,
so a request only it could serve, one with tools, say, is a legitimate 503).
The other documented 503s (draining, Redis shared state failing closed) cannot
happen here. Anything else — a 500, a 5xx without the header — is modelpool's
own bug, and so is any "unhandled error" line in the daemon's log.

Repeatable: a fixed seed and derandomized generation; bounded: 25 generated
examples per operation. ``POST /admin/reload`` is documented but not fuzzed:
it takes no input, and reloading an unchanged file is a no-op.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
import schemathesis
from e2e_daemon import Daemon
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, HookContext, Response
from schemathesis.openapi import from_dict
from schemathesis.schemas import BaseSchema

from modelpool.openapi import document

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SETTINGS = {
    "seed": 8_2026,
    "request-timeout": 10,
    "generation": {"max-examples": 25, "deterministic": True, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
    "checks": {
        # Replaced by `no_5xx_of_its_own`: an upstream's failure is a documented 5xx.
        "not_a_server_error": {"enabled": False},
        # The schema says what modelpool checks, not which pools exist or which
        # usage query strings parse: a valid `model` may name no pool (404).
        "positive_data_acceptance": {"enabled": False},
    },
}
UPSTREAM_FAILURES = frozenset({502, 503, 504})


def shipped_schema() -> BaseSchema:
    """The document as the package ships it (``test_served_document_is_the_shipped_one``
    holds the daemon to serving exactly this): loaded at collection, before any daemon."""
    config = schemathesis.Config.from_dict(SETTINGS)
    return from_dict(json.loads(document()), config=config)


def no_5xx_of_its_own(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A 5xx must be an upstream's failure that modelpool reports, never its own."""
    status = response.status_code
    if status < 500:
        return None
    attempts = response.headers.get("x-modelpool-attempts")
    reported_upstream_failure = status in UPSTREAM_FAILURES and attempts is not None
    assert reported_upstream_failure, (
        f"{case.method} {case.path} answered {status} without being an upstream failure "
        f"(x-modelpool-attempts: {attempts}): {response.text[:500]}"
    )
    return True


schema = shipped_schema().exclude(method="POST", path="/admin/reload")

POOLS = {"/v1/embeddings": ["embed", "mock-embed"]}
DEFAULT_POOLS = ["default", "mock-small"]
TIMES = ["7d", "12h", "2w", "0h", "2026-01-01", "2026-01-01T10:00:00+02:00", "9999-12-31"]
TIMES += ["0001-01-01", "99999999999999999999d", "1e9h", " 3d ", "today"]


@schema.hook
def flatmap_body(context: HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Two bodies in three name a pool or model the example serves, so they get past
    routing to the dispatcher, the mock and back (a random string is an unknown pool)."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return st.just(body)
    path = context.operation.path if context.operation is not None else ""
    names = [*POOLS.get(path, DEFAULT_POOLS), None]
    return st.sampled_from(names).map(
        lambda name: body if name is None else {**body, "model": name}
    )


@schema.hook
def flatmap_query(context: HookContext, query: Any) -> st.SearchStrategy[Any]:
    """/admin/usage's times in the forms it parses, edge cases included (a random string
    is rarely one)."""
    if not isinstance(query, dict) or not ({"since", "until"} & query.keys()):
        return st.just(query)
    times = st.sampled_from(TIMES)
    return st.one_of(
        st.just(query),
        st.fixed_dictionaries({key: times for key in {"since", "until"} & query.keys()}).map(
            lambda drawn: {**query, **drawn}
        ),
    )


def test_served_document_is_the_shipped_one(daemon: Daemon) -> None:
    with urllib.request.urlopen(f"{daemon.url}/openapi.json", timeout=10) as response:
        assert response.headers.get_content_type() == "application/json"
        assert response.read() == document()


@schema.parametrize()
def test_daemon_answers_as_documented(case: Case, daemon: Daemon) -> None:
    case.call_and_validate(base_url=daemon.url, additional_checks=[no_5xx_of_its_own])


@pytest.mark.parametrize("key", ["since", "until"])
@pytest.mark.parametrize("value", TIMES)
def test_usage_times(daemon: Daemon, key: str, value: str) -> None:
    """Each form /admin/usage reads, and edge cases of each: a report or a 400, never a 500."""
    query = urllib.parse.urlencode({key: value})
    status, body = get(f"{daemon.url}/admin/usage?{query}")
    assert status in (200, 400), (status, body)
    assert ("rows" in body) if status == 200 else ("error" in body), body


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_daemon_logged_no_unhandled_error(daemon: Daemon) -> None:
    """Runs after the fuzzing (same module, same daemon): no traceback was logged."""
    unhandled = [
        line for line in daemon.log_lines() if line.get("msg", "").startswith("unhandled error")
    ]
    assert not unhandled, unhandled[:3]
