"""A fault-injecting fake OpenAI upstream, for tests and for your own failure drills.

Point a modelpool provider's ``base_url`` at it (``http://127.0.0.1:PORT/v1``)
and make it fail the way real providers do, in a scripted order::

    modelpool fake-upstream --listen 127.0.0.1:9100 --fault status=503*2 --fault ok
    modelpool fake-upstream --fault status=429,retry_after=2*3 --fault latency=1s --loop
    modelpool fake-upstream --script drill.yaml

It serves ``POST /v1/chat/completions`` (plain and ``stream: true``, with the
final usage chunk when ``stream_options.include_usage`` is set),
``POST /v1/completions``, ``POST /v1/embeddings`` and ``GET /v1/models``, with
deterministic answers and ``usage``. It logs one JSON line per request and
stops with exit code 0 on SIGTERM or SIGINT.

Faults (compact spec; the same keys work as a YAML/JSON mapping)::

    ok                       a normal answer
    latency=2s               wait before the status line, then answer
    status=503               that status with an OpenAI error body
      ,retry_after=2           plus Retry-After (also retry_after_ms=, message=)
    reset                    TCP RST before any response byte
    hang[=300s]              never answer: until the client leaves or the bound
    drip=200ms[,ping=50ms]   the answer with a pause between chunks; in a stream
                             send ``: ping`` comment lines while pausing
    truncate[=K]             200, K chunks (default 1), then close: no [DONE]
    stall[=K][,ping=1s]      200, K chunks, then silence on an open connection
    error_in_stream          200 event stream whose first event is {"error": ...}
    invalid_json             200 application/json with a garbage body

Any fault takes ``latency=`` too, truncate and stall take ``drip=``; append
``*N`` for a count (``status=500*3``) and ``path=/v1/embeddings`` to apply a
step only to that path (other requests are answered normally and do not use
it up). A step without a count lasts one request, except the last step of a
script that does not loop, which lasts for ever; after the last step the fake
answers ``ok``, or starts over with ``--loop``. Without a stream, stream
faults act on the JSON body (slow, cut short of its Content-Length, or a 200
whose body is an error object). A script file::

    loop: true
    steps:
      - status=503*2
      - {status: 429, retry_after: 1, path: /v1/chat/completions}
      - ok*5

At run time (no restart): ``POST /_fault`` with a script replaces it,
``GET /_fault`` shows it with per-step counters, ``DELETE /_fault`` clears it,
``GET /_stats`` counts requests per path and fault, the Authorization headers
seen (last 4 characters only) and requests in flight or abandoned by the
client, and ``POST /_reset`` zeroes the counters. In Python tests,
``async with running(script_from(["reset", "ok"])) as url:`` serves one on a
free loopback port.
"""

from modelpool.fakeup.script import (
    Fault,
    FaultScriptError,
    Script,
    Step,
    build_script,
    load_script,
    parse_spec,
    script_from,
    script_from_args,
)
from modelpool.fakeup.server import build_app, running, serve

__all__ = [
    "Fault",
    "FaultScriptError",
    "Script",
    "Step",
    "build_app",
    "build_script",
    "load_script",
    "parse_spec",
    "running",
    "script_from",
    "script_from_args",
    "serve",
]
