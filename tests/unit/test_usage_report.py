"""Rendering a usage report: the aligned table, JSON and CSV; and the CLI's argument parsing."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from modelpool.usage.cli_report import (
    UsageArgs,
    build_query,
    locate_store,
    parse_group_by,
    parse_time,
)
from modelpool.usage.record import Totals
from modelpool.usage.report import (
    FIELDS,
    render_csv,
    render_table,
    report_json,
    total_of,
)
from modelpool.usage.store import Row, StoreError

ROWS = [
    Row(
        key=("alice", "2024-02-01"),
        totals=Totals(
            requests=12,
            errors=1,
            cancelled=2,
            input_tokens=3400,
            output_tokens=1200,
            cache_read_tokens=100,
            cache_write_tokens=7,
            cost_usd=0.0123456789,
            cost_unknown=0,
        ),
    ),
    Row(
        key=("bob", "2024-02-01"),
        totals=Totals(requests=1, input_tokens=5, output_tokens=3, cost_usd=1e-7, cost_unknown=1),
    ),
]
BY = ("client", "day")


def test_total_sums_every_field() -> None:
    total = total_of(ROWS)
    assert total.requests == 13
    assert total.cancelled == 2
    assert total.tokens == 3400 + 1200 + 100 + 7 + 5 + 3
    assert total.cost_usd == 0.0123456789 + 1e-7
    assert total.cost_unknown == 1
    assert total_of([]) == Totals()


def test_the_table_is_aligned_with_a_total_line() -> None:
    lines = render_table(ROWS, BY).splitlines()
    assert lines[0].split() == ["client", "day", *_headings()]
    assert lines[1].split() == [
        "alice",
        "2024-02-01",
        "12",
        "1",
        "2",
        "3400",
        "1200",
        "100",
        "7",
        "4707",
        "0.012346",
        "0",
    ]
    assert lines[2].split()[-2:] == ["0.000000", "1"]
    total = ["TOTAL", "13", "1", "2", "3405", "1203", "100", "7", "4715", "0.012346", "1"]
    assert lines[3].split() == total
    assert len(lines) == 4
    assert len({len(line) for line in lines}) == 1  # numbers right-aligned, to the last column
    assert lines[1].index("2024-02-01") == lines[0].index("day")  # keys left-aligned
    assert lines[1].index("0.012346") + len("0.012346") == lines[0].index("cost_usd") + 8


def _headings() -> list[str]:
    return [
        "requests",
        "errors",
        "cancelled",
        "input",
        "output",
        "cache_read",
        "cache_write",
        "tokens",
        "cost_usd",
        "cost_unknown",
    ]


def test_an_ungrouped_or_empty_table_still_has_a_total() -> None:
    ungrouped = render_table([Row(key=(), totals=Totals(requests=3))], ()).splitlines()
    assert ungrouped[0].split() == _headings()
    assert ungrouped[-1].split()[0:2] == ["TOTAL", "3"]
    empty = render_table([], BY).splitlines()
    assert len(empty) == 2
    assert empty[1].split()[:2] == ["TOTAL", "0"]


def test_json_has_the_keys_by_name_the_totals_and_a_total() -> None:
    report = report_json(ROWS, BY)
    assert report["group_by"] == ["client", "day"]
    first = report["rows"][0]
    assert first["client"] == "alice"
    assert first["day"] == "2024-02-01"
    assert first["cost_usd"] == 0.0123456789  # never rounded
    assert first["tokens"] == 4707
    assert list(first)[2:] == list(FIELDS)
    assert report["total"]["requests"] == 13
    assert json.loads(json.dumps(report)) == report


def test_csv_has_a_header_then_exact_rows() -> None:
    text = render_csv(ROWS, BY)
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["client", "day", *FIELDS]
    assert len(table) == 3
    assert table[1][:3] == ["alice", "2024-02-01", "12"]
    assert float(table[1][FIELDS.index("cost_usd") + 2]) == 0.0123456789
    assert float(table[2][FIELDS.index("cost_usd") + 2]) == 1e-7
    assert "\r" not in text


def test_csv_quotes_awkward_names() -> None:
    row = Row(key=('team, "ops"',), totals=Totals(requests=1))
    table = list(csv.reader(io.StringIO(render_csv([row], ("client",)))))
    assert table[1][0] == 'team, "ops"'


# --------------------------------------------------------------------------- CLI arguments

NOW = 1_706_788_800.0  # 2024-02-01T12:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-02-01", 1_706_745_600.0),
        ("2024-02-01T10:30", 1_706_783_400.0),
        ("2024-02-01T10:30:00Z", 1_706_783_400.0),
        ("2024-02-01T12:30:00+02:00", 1_706_783_400.0),
        ("7d", NOW - 7 * 86400),
        ("12h", NOW - 12 * 3600),
        ("2w", NOW - 14 * 86400),
    ],
)
def test_times_are_dates_iso_times_or_ages(text: str, expected: float) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "7x", "2024-13-01", ""])
def test_a_bad_time_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_time(text, NOW)


def test_group_keys_are_checked() -> None:
    assert parse_group_by("client, model,hour") == ("client", "model", "hour")
    assert parse_group_by("") == ()
    with pytest.raises(ValueError, match="unknown key month"):
        parse_group_by("client,month")


def test_since_counts_from_the_start_of_its_hour() -> None:
    query = build_query(UsageArgs(since="2024-02-01T10:30", until="2024-02-02", pool="chat"), NOW)
    assert query.since == 1_706_781_600  # 10:00
    assert query.until == 1_706_832_000.0
    assert query.pool == "chat"
    assert query.group_by == ("client", "pool", "model", "day")


def test_the_store_is_found_from_the_flag_or_the_working_directory(tmp_path: Path) -> None:
    assert locate_store(None, "x.db", tmp_path) == tmp_path / "x.db"
    assert locate_store(None, "sqlite:///srv/u.db", tmp_path) == Path("/srv/u.db")
    with pytest.raises(StoreError, match=r"no usage\.db in .*--store"):
        locate_store(None, None, tmp_path)
    (tmp_path / "usage.db").touch()
    assert locate_store(None, None, tmp_path) == tmp_path / "usage.db"
