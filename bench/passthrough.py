"""The ceiling of modelpool's stack: aiohttp server + aiohttp client on uvloop, nothing else.

    python bench/passthrough.py --port 0 --upstream http://127.0.0.1:PORT

Forwards every request's body to the same path on the upstream over a pooled
keep-alive connection and relays the answer as it comes — a stream chunk by
chunk — without parsing either. Prints ``{"listening": "http://127.0.0.1:PORT"}``
once it accepts connections; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import aiohttp
import uvloop
from aiohttp import web

FORWARDED = ("Content-Type", "Authorization", "Accept")


async def serve(port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(
        upstream, connector=aiohttp.TCPConnector(limit=128), auto_decompress=False
    )

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k in FORWARDED if (v := request.headers.get(k)) is not None}
        body = await request.read()
        async with session.post(request.path, data=body, headers=headers) as answer:
            kind = answer.headers.get("Content-Type", "application/json")
            if not kind.startswith("text/event-stream"):
                raw = await answer.read()
                return web.Response(status=answer.status, body=raw, headers={"Content-Type": kind})
            relay = web.StreamResponse(status=answer.status, headers={"Content-Type": kind})
            await relay.prepare(request)
            async for chunk in answer.content.iter_any():
                await relay.write(chunk)
            await relay.write_eof()
            return relay

    app = web.Application()
    app.router.add_post("/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    bound = runner.addresses[0]
    print(json.dumps({"listening": f"http://{bound[0]}:{bound[1]}"}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await session.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
