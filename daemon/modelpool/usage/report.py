"""A usage report as text: an aligned table for people, JSON and CSV for scripts.

Pure functions of the rows a store returns (:meth:`UsageStore.report`) and
the keys they were grouped by, so ``modelpool usage`` and ``GET
/admin/usage`` render the same report the same way. Costs are never rounded
except in the table, which shows whole micro-dollars.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from modelpool.usage.record import Totals
from modelpool.usage.store import Row

FIELDS = (
    "requests",
    "errors",
    "cancelled",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "tokens",
    "cost_usd",
    "cost_unknown",
)
"""The totals of a row, as JSON keys and CSV columns (``tokens`` is the four counts summed)."""
HEADINGS = (
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
)
"""The same columns, shorter, for the table."""
GAP = "  "


def total_of(rows: Sequence[Row]) -> Totals:
    """The sum of every row (the report's TOTAL)."""
    totals = [row.totals for row in rows]
    return Totals(
        requests=sum(t.requests for t in totals),
        errors=sum(t.errors for t in totals),
        cancelled=sum(t.cancelled for t in totals),
        input_tokens=sum(t.input_tokens for t in totals),
        output_tokens=sum(t.output_tokens for t in totals),
        cache_read_tokens=sum(t.cache_read_tokens for t in totals),
        cache_write_tokens=sum(t.cache_write_tokens for t in totals),
        cost_usd=math.fsum(t.cost_usd for t in totals),
        cost_unknown=sum(t.cost_unknown for t in totals),
    )


def totals_json(totals: Totals) -> dict[str, int | float]:
    return {name: getattr(totals, name) for name in FIELDS}


def report_json(rows: Sequence[Row], group_by: Sequence[str]) -> dict[str, Any]:
    """``{"group_by": [...], "rows": [{key…, totals…}], "total": {totals…}}``."""
    return {
        "group_by": list(group_by),
        "rows": [
            dict(zip(group_by, row.key, strict=True)) | totals_json(row.totals) for row in rows
        ],
        "total": totals_json(total_of(rows)),
    }


def render_csv(rows: Sequence[Row], group_by: Sequence[str]) -> str:
    """A header line (the keys, then :data:`FIELDS`), then one line per row; no total."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*group_by, *FIELDS])
    for row in rows:
        writer.writerow([*row.key, *totals_json(row.totals).values()])  # floats: repr, exact
    return out.getvalue()


def render_table(rows: Sequence[Row], group_by: Sequence[str]) -> str:
    """Key columns left-aligned, numbers right-aligned, a TOTAL line at the bottom."""
    labels = list(group_by) or [""]  # ungrouped: an unnamed column to hold "TOTAL"
    body = [[*(row.key or ("",)), *_cells(row.totals)] for row in rows]
    total = ["TOTAL", *[""] * (len(labels) - 1), *_cells(total_of(rows))]
    lines = [[*labels, *HEADINGS], *body, total]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "".join(_line(line, widths, len(labels)) for line in lines)


def _cells(totals: Totals) -> list[str]:
    values = totals_json(totals)
    return [f"{v:.6f}" if name == "cost_usd" else str(v) for name, v in values.items()]


def _line(cells: Sequence[str], widths: Sequence[int], keys: int) -> str:
    padded = [
        cell.ljust(width) if i < keys else cell.rjust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    ]
    return GAP.join(padded).rstrip() + "\n"
