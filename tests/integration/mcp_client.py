"""The official MCP Python client, as an agent would use it against modelpool's /mcp.

Shared by the in-process tests and the e2e tests (whose conftest puts this
folder on sys.path).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

PROTOCOL_HEADERS = {"Accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"},
    },
}


def key_headers(key: str | None, header: str = "Authorization") -> dict[str, str]:
    if key is None:
        return {}
    return {"Authorization": f"Bearer {key}"} if header == "Authorization" else {header: key}


@asynccontextmanager
async def mcp_session(
    url: str, key: str | None = None, *, header: str = "Authorization"
) -> AsyncIterator[ClientSession]:
    """An initialized session with the official client (initialize handshake)."""
    async with (
        httpx2.AsyncClient(headers=key_headers(key, header), timeout=10) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def call(session: ClientSession, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    """A tool's structured result; its text content must say the same."""
    result = await session.call_tool(tool, arguments or {})
    text = result.content[0].text  # type: ignore[union-attr]
    assert not result.is_error, text
    assert json.loads(text) == result.structured_content
    return result.structured_content


async def call_error(
    session: ClientSession, tool: str, arguments: dict[str, Any] | None = None
) -> str:
    """The message of a tool call that must fail."""
    result = await session.call_tool(tool, arguments or {})
    assert result.is_error, result
    text: str = result.content[0].text  # type: ignore[union-attr]
    return text


async def read_json(session: ClientSession, uri: str) -> Any:
    result = await session.read_resource(uri)
    [contents] = result.contents
    assert contents.uri == uri
    assert contents.mime_type == "application/json"
    return json.loads(contents.text)  # type: ignore[union-attr]
