"""argv → commands. No logic lives here: each command calls into the package."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import secrets
import sys
from collections.abc import Sequence

from modelpool.config.gate import child_gate
from modelpool.config.judge import schema_text
from modelpool.config.load import load_config
from modelpool.config.semantic import is_loopback
from modelpool.config.spec import Config, parse_listen
from modelpool.errors import ConfigError

DEFAULT_CONFIG = "pools.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelpool", description="LLM model registry and pool manager."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon")
    run.add_argument(
        "config", nargs="?", help="config file (default: $MODELPOOL_CONFIG or ./pools.yaml)"
    )
    run.add_argument(
        "--listen", help="HOST:PORT, overriding server.listen (port 0 picks a free one)"
    )
    run.add_argument("--log-format", choices=["json", "text"], help="overrides server.log_format")
    check = commands.add_parser("check", help="validate a config and print its routing table")
    check.add_argument("config")
    commands.add_parser("keygen", help="print a new client key and its sha256 for `clients:`")
    commands.add_parser("schema", help="print the config's JSON Schema")
    _usage_parser(commands)
    _fake_upstream_parser(commands)
    return parser


def _usage_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = commands.add_parser(
        "usage",
        help="print usage and cost from the usage store",
        description="Totals from the usage store, read-only (safe while the daemon runs). "
        "Times are UTC; buckets are hourly.",
    )
    usage.add_argument(
        "config", nargs="?", help="config file, to find usage.store (default: ./usage.db)"
    )
    usage.add_argument("--store", help="sqlite:///PATH or a path, overriding the config's")
    usage.add_argument("--since", help="YYYY-MM-DD, an ISO time, or an age such as 12h, 7d, 2w")
    usage.add_argument("--until", help="the same forms; the report stops before it")
    usage.add_argument(
        "--by",
        default="client,pool,model,day",
        help="group by, comma-separated: client, pool, model, day, hour ('' for one total; "
        "default client,pool,model,day)",
    )
    usage.add_argument("--client", help="only this client")
    usage.add_argument("--pool", help="only this pool")
    usage.add_argument("--model", help="only this model")
    output = usage.add_mutually_exclusive_group()
    output.add_argument("--json", dest="output", action="store_const", const="json")
    output.add_argument("--csv", dest="output", action="store_const", const="csv")
    usage.set_defaults(output="table")


def _fake_upstream_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fake = commands.add_parser(
        "fake-upstream",
        help="run a fault-injecting fake OpenAI upstream for tests and drills",
        description="A fake OpenAI upstream that fails as scripted (see `pydoc modelpool.fakeup`).",
    )
    fake.add_argument(
        "--listen",
        default="127.0.0.1:9100",
        help="HOST:PORT (default 127.0.0.1:9100; port 0 picks a free one)",
    )
    source = fake.add_mutually_exclusive_group()
    source.add_argument("--script", help="a YAML or JSON fault script")
    source.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="a step such as status=503*2, status=429,retry_after=2, latency=2s, reset, hang, "
        "drip=200ms,ping=50ms, truncate=3, stall=2, error_in_stream, invalid_json, ok "
        "(repeat for a sequence)",
    )
    fake.add_argument("--loop", action="store_true", help="start the script over after its end")
    fake.add_argument(
        "--model", action="append", default=[], help="a model id for GET /v1/models (repeatable)"
    )
    fake.add_argument("--log-format", choices=["json", "text"], default="json")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schema":
        sys.stdout.write(schema_text())
        return 0
    if args.command == "keygen":
        return _keygen()
    if args.command == "check":
        return _check(args.config)
    if args.command == "fake-upstream":
        return _fake_upstream(args)
    if args.command == "usage":
        return _usage(args)
    return _run(
        args.config or os.environ.get("MODELPOOL_CONFIG", DEFAULT_CONFIG),
        args.listen,
        args.log_format,
    )


def _keygen() -> int:
    key = "mp-" + secrets.token_urlsafe(32)
    print(f"key:        {key}")
    print(f"key_sha256: {hashlib.sha256(key.encode()).hexdigest()}")
    return 0


def _check(path: str) -> int:
    from modelpool.describe import describe

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(
            f"{path}: invalid ({len(exc.issues)} error{'s' if len(exc.issues) != 1 else ''})",
            file=sys.stderr,
        )
        return 1
    print(describe(config))
    return 0


def _run(path: str, listen: str | None, log_format: str | None) -> int:
    try:
        config = _daemon_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    host, port = parse_listen(listen) if listen else (config.server.host, config.server.port)
    if not config.clients and not is_loopback(host):
        print(
            f"refusing to listen on non-loopback {host!r} without `clients` configured",
            file=sys.stderr,
        )
        return 1
    from modelpool.app import serve
    from modelpool.logs import setup_logging
    from modelpool.usage.store import StoreError

    setup_logging(log_format or config.server.log_format, config.server.log_level)
    try:
        return _event_loop_run(serve(config, host, port))
    except (ConfigError, StoreError) as exc:  # the usage store could not be opened
        print(exc, file=sys.stderr)
        return 1


def _daemon_config(path: str) -> Config:
    """The config, validated by a gate child started before the server's imports:
    the child's start and those imports take about as long, and overlap."""
    with child_gate() as gate:
        import modelpool.app  # noqa: F401 - imported here to overlap the child's start

        return load_config(path, gate=lambda: contextlib.nullcontext(gate))


def _usage(args: argparse.Namespace) -> int:
    from modelpool.usage.cli_report import UsageArgs, run_usage

    return run_usage(
        UsageArgs(
            config=args.config,
            store=args.store,
            since=args.since,
            until=args.until,
            by=args.by,
            client=args.client,
            pool=args.pool,
            model=args.model,
            output=args.output,
        )
    )


def _fake_upstream(args: argparse.Namespace) -> int:
    from modelpool.fakeup import script_from_args, serve
    from modelpool.logs import setup_logging

    try:
        script = script_from_args(args.script, args.fault, loop=args.loop)
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        print(f"fake-upstream: {exc}", file=sys.stderr)
        return 1
    setup_logging(args.log_format, "info")
    return _event_loop_run(serve(script, host, port, args.model))


def _event_loop_run(coro: object) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(coro)  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
