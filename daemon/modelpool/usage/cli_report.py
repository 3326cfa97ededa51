"""``modelpool usage``: find the store, read it read-only, print a report.

The store is found from ``--store``, else the config's ``usage.store``, else
``usage.db`` in the current directory. It is opened with ``mode=ro``, so the
command is safe to run beside a daemon that is writing the file (WAL); what
the daemon still holds in its buffer (at most one flush interval) is not in
the file yet, so ``GET /admin/usage`` is the exact view of a running daemon.

Buckets are hourly, so ``--since`` counts from the start of the hour it falls
in, and ``--until`` stops before the first hour that starts at or after it.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

from modelpool.errors import ConfigError
from modelpool.usage.report import render_csv, render_table, report_json
from modelpool.usage.sqlite import read_report
from modelpool.usage.store import GroupKey, Query, Row, StoreError, sqlite_path
from modelpool.usage.tally import bucket_of

Output = Literal["table", "json", "csv"]

DEFAULT_STORE = "usage.db"
DEFAULT_GROUP_BY = "client,pool,model,day"
GROUP_KEYS: dict[str, GroupKey] = {key: key for key in get_args(GroupKey)}
_AGE = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")
_AGE_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
MAX_AGE_YEARS = 100
MAX_AGE = MAX_AGE_YEARS * 366 * 86400


@dataclass(frozen=True, slots=True)
class UsageArgs:
    """The command line of ``modelpool usage``, as argparse left it."""

    config: str | None = None
    store: str | None = None
    since: str | None = None
    until: str | None = None
    by: str = DEFAULT_GROUP_BY
    client: str | None = None
    pool: str | None = None
    model: str | None = None
    output: Output = "table"


def run_usage(args: UsageArgs, *, now: float | None = None) -> int:
    """Print the report on stdout (0), or one line saying what is wrong on stderr (1)."""
    try:
        query = build_query(args, time.time() if now is None else now)
        rows = read_report(locate_store(args.config, args.store, Path.cwd()), query)
    except (StoreError, ValueError) as exc:
        print(f"modelpool usage: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    sys.stdout.write(render(rows, query.group_by, args.output))
    return 0


def render(rows: Sequence[Row], group_by: Sequence[GroupKey], output: Output) -> str:
    """The report in the format asked for (a table unless --json or --csv)."""
    if output == "json":
        return json.dumps(report_json(rows, group_by), indent=2) + "\n"
    if output == "csv":
        return render_csv(rows, group_by)
    return render_table(rows, group_by)


def locate_store(config: str | None, store: str | None, cwd: Path) -> Path:
    """``--store`` (relative to ``cwd``), else the config's store, else ``cwd/usage.db``."""
    if store is not None:
        return cwd / sqlite_path(store)
    if config is not None:
        from modelpool.config.load import NO_STORE, load_config

        spec = load_config(config).usage
        if spec.store == NO_STORE:
            raise StoreError(f"{config} keeps no usage (usage.store: none)")
        return sqlite_path(spec.store)
    default = cwd / DEFAULT_STORE
    if not default.is_file():
        raise StoreError(f"no {DEFAULT_STORE} in {cwd}; name the config or pass --store")
    return default


def build_query(args: UsageArgs, now: float) -> Query:
    since = None if args.since is None else bucket_of(parse_time(args.since, now))
    return Query(
        since=since,
        until=None if args.until is None else parse_time(args.until, now),
        client=args.client,
        pool=args.pool,
        model=args.model,
        group_by=parse_group_by(args.by),
    )


def parse_group_by(text: str) -> tuple[GroupKey, ...]:
    """``client,pool`` → ("client", "pool"); an empty string groups nothing (one total)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in GROUP_KEYS]
    if unknown:
        raise ValueError(f"--by: unknown key {', '.join(unknown)} (use {', '.join(GROUP_KEYS)})")
    return tuple(GROUP_KEYS[name] for name in names)


def parse_time(text: str, now: float) -> float:
    """Unix time of ``YYYY-MM-DD``, an ISO time (UTC unless it says), or an age (``7d``)."""
    age = _AGE.match(text)
    if age:
        seconds = int(age[1]) * _AGE_UNITS[age[2]]
        if seconds > MAX_AGE:
            raise ValueError(f"not a time: {text!r} is further back than {MAX_AGE_YEARS} years")
        return now - seconds
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use YYYY-MM-DD, an ISO time, or an age such as 12h, 7d, 2w)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
