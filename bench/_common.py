"""Small helpers every benchmark needs: CPU time of a process, medians, the JSON line.

Benchmarks print progress to stderr and exactly one JSON object as the last
line of stdout (``docs/BENCHMARKS.md``); these helpers keep that format the
same across ``bench/*.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Iterable, Mapping
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """Progress for the operator: stderr, so stdout stays one JSON line."""
    print(message, file=sys.stderr, flush=True)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name may contain spaces and parentheses: fields follow the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def median_summary(runs: Iterable[Mapping[str, float]], spread: Iterable[str] = (),
                   digits: Mapping[str, int] | None = None) -> dict[str, float]:
    """Per key, the median over ``runs``; ``<key>_min``/``<key>_max`` for keys in ``spread``.

    A key missing from some runs is summarised over the runs that have it.
    ``digits`` rounds per key (0 gives an int); other keys get two decimals.
    """
    runs = list(runs)
    digits = digits or {}
    wanted = set(spread)
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run if k not in keys)
    out: dict[str, float] = {}
    for key in keys:
        values = [run[key] for run in runs if key in run]
        out[key] = _round(statistics.median(values), digits.get(key, 2))
        if key in wanted and len(values) > 1:
            out[f"{key}_min"] = _round(min(values), digits.get(key, 2))
            out[f"{key}_max"] = _round(max(values), digits.get(key, 2))
    return out


def _round(value: float, digits: int) -> float:
    return round(value) if digits == 0 else round(value, digits)


def ratio(results: Mapping[str, Mapping[str, Any]], a: str, b: str, key: str) -> float | None:
    """``results[a][key] / results[b][key]``, or None when either is missing or zero."""
    x, y = results.get(a, {}).get(key), results.get(b, {}).get(key)
    if not x or not y:
        return None
    return round(x / y, 3)


def emit(bench: str, quick: bool, repetitions: int, results: Mapping[str, Any],
         ratios: Mapping[str, float | None]) -> None:
    """The benchmark's last stdout line."""
    print(json.dumps({"bench": bench, "quick": quick, "repetitions": repetitions,
                      "results": results, "ratios": ratios}), flush=True)
