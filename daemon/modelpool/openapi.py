"""``GET /openapi.json``: the OpenAPI 3.1 document of modelpool's HTTP API.

The document is a file shipped in the package (``openapi.json``), written by
hand and held to the daemon by tests: the suite checks it is valid OpenAPI 3.1,
that it names exactly the routes the app registers, and fuzzes the running
daemon against it (tests/e2e/test_openapi_fuzz.py).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web


@cache
def document() -> bytes:
    """The document as shipped, read once."""
    return resources.files("modelpool").joinpath("openapi.json").read_bytes()


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=document(), content_type="application/json")


def routes() -> list[web.RouteDef]:
    return [web.get("/openapi.json", openapi)]
