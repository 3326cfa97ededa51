"""Throughput and latency through modelpool with usage accounting and budgets, against none.

    .venv/bin/python bench/accounting.py [--reps 3] [--json out.json] [--keep]

The same harness as bench/limits.py (interleaved repetitions, modelpool
pinned on its own core, wrk and the upstream on the other, medians and
per-repetition ratios against the first row), with three variants of one
priced model behind one pool and one client:

* **accounting off**: ``usage.store: none`` — requests are still priced and
  counted in the Prometheus metrics, nothing is kept.
* **accounting on**: the default SQLite store — every request also goes into
  the store's buffer, flushed once a second on a worker thread.
* **accounting + budgets**: the store, plus USD and token budgets per day and
  per month on the client and on the pool (far above what the run can
  spend): every request also reserves its worst case on eight meters and
  settles them.

Takes about 80 s.
"""

from __future__ import annotations

import sys

from limits import Variant, main

PRICE = {"input_per_mtok": 3.0, "output_per_mtok": 15.0, "cache_read_per_mtok": 0.3}
BUDGET = {
    "usd_per_day": 1_000_000,
    "usd_per_month": 10_000_000,
    "tokens_per_day": 10**12,
    "tokens_per_month": 10**13,
}

VARIANTS = (
    Variant("accounting off (store: none)", model_extra={"price": PRICE}, usage={"store": "none"}),
    Variant("accounting on (SQLite store)", model_extra={"price": PRICE}),
    Variant(
        "accounting + budgets (client and pool, USD and tokens)",
        model_extra={"price": PRICE},
        client_extra={"budget": BUDGET},
        pool={"budget": BUDGET},
    ),
)

if __name__ == "__main__":
    sys.exit(main(variants=VARIANTS, description=__doc__.splitlines()[0]))
