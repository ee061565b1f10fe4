"""`make bench QUICK=1` (BENCH_QUICK=1): every benchmark at a small size, so CI runs each one end to end and none
can rot. Quick figures show that the code runs, not how fast it is; the README's figures come from full runs."""

from __future__ import annotations

import os

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0", "false")


def sized(full, quick):
    """`full` normally, `quick` under BENCH_QUICK."""
    return quick if QUICK else full
