"""Day-of-week time windows for the ``current_utc_datetime`` condition.

Syntax (REFERENCE.md 2.2, reference ``Portal.Policies.Evaluator``)::

    M/09:00-17:00,18:00-20:00/Europe/Berlin

* one day letter per value: ``M T W R F S U`` (Monday .. Sunday); a condition
  lists several values for several days (``["M/9-17/UTC", "T/9-17/UTC"]``);
  ``MTW/...`` is refused;
* comma-separated ranges ``start-end`` with times ``H``, ``H:MM`` or
  ``H:MM:SS`` (one or two digits per field), or ``true`` for the whole day
  (``00:00:00-23:59:59``); an empty range list (``M//UTC``, which the reference
  accepts) means no window that day;
* a timezone from the tz database is required (it may itself contain ``/``).

Semantics chosen here:

* the end second is *inclusive*: ``09:00-17:00`` holds while the local wall
  clock, truncated to the second, is in ``[09:00:00, 17:00:00]``; so ``true``
  covers the whole day and the window is left at 17:00:01;
* ranges of the same day and timezone that overlap or touch (the next starts
  at most one second after the previous ends) are merged, also across values;
* membership is decided on the actual local wall-clock time of ``now``.  On a
  spring-forward day the skipped local times simply never occur; on a
  fall-back day the repeated hour is inside a window each time the wall clock
  shows it;
* when inside, ``expires_at`` is the first UTC instant after ``now`` at which
  the wall clock is outside the day's merged ranges: normally local
  ``end + 1s`` converted to UTC; if a DST jump leaves the range earlier (e.g.
  an end time inside the spring-forward gap) it is the instant of the jump;
  if a fall-back jump lands back inside, the window goes on;
* when several values hold at ``now`` the latest ``expires_at`` is returned;
  windows of different days are not chained (``M/true`` + ``T/true`` expires
  at midnight, as in the reference).

Tz transitions are assumed to be more than a day apart (true of the tz
database), and to fall on whole seconds.
"""

from __future__ import annotations

import functools
import math
import re
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from firezone.policy.errors import InvalidTimeWindow
from firezone.policy.model import Instant, to_timestamp

__all__ = [
    "DAY_LETTERS",
    "DayWindow",
    "InvalidTimeWindow",
    "Schedule",
    "TimeRange",
    "WindowState",
    "evaluate",
    "load_timezone",
    "merge_ranges",
    "parse_day_time_ranges",
    "parse_schedule",
    "parse_time",
    "parse_time_range",
    "parse_time_ranges",
]

#: Day letters indexed by ``datetime.weekday()`` (Monday = 0).
DAY_LETTERS = "MTWRFSU"
_LAST_SECOND = 86399
_EPOCH = datetime(1970, 1, 1)
_TIME_RE = re.compile(r"\A([0-9]{1,2})(?::([0-9]{1,2})(?::([0-9]{1,2}))?)?\Z")


@dataclass(frozen=True, order=True)
class TimeRange:
    """Seconds since local midnight; ``end`` is inclusive (the whole second)."""

    start: int
    end: int

    def __str__(self) -> str:
        return f"{_fmt(self.start)}-{_fmt(self.end)}"


def _fmt(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass(frozen=True)
class DayWindow:
    """The merged ranges of one weekday (0 = Monday) in one timezone."""

    day: int
    ranges: tuple[TimeRange, ...]
    timezone: str


@dataclass(frozen=True)
class Schedule:
    """A parsed condition value list."""

    windows: tuple[DayWindow, ...]


@dataclass(frozen=True)
class WindowState:
    """Whether ``now`` is inside; if so the first instant outside (unix seconds)."""

    inside: bool
    expires_at: float | None = None


@functools.cache
def _known_zones() -> frozenset[str]:
    # "localtime" names whatever the host is set to: not a portable zone.
    return frozenset(zoneinfo.available_timezones()) - {"localtime", "posixrules"}


@functools.lru_cache(maxsize=1024)
def load_timezone(name: str) -> zoneinfo.ZoneInfo:
    """The tz database zone ``name``; raises InvalidTimeWindow when unknown."""
    known = _known_zones()
    if (known and name not in known) or name in ("localtime", "posixrules"):
        raise InvalidTimeWindow(f"invalid timezone {name!r}")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidTimeWindow(f"invalid timezone {name!r}") from None


def parse_time(text: str) -> int:
    """``H``, ``H:MM`` or ``H:MM:SS`` to seconds since midnight."""
    m = _TIME_RE.match(text.strip())
    if m is None:
        raise InvalidTimeWindow(f"invalid time: {text!r}")
    hours, minutes, seconds = (int(g) if g is not None else 0 for g in m.groups())
    if hours > 23 or minutes > 59 or seconds > 59:
        raise InvalidTimeWindow(f"invalid time: {text!r}")
    return hours * 3600 + minutes * 60 + seconds


def parse_time_range(text: str) -> TimeRange:
    """``start-end`` or ``true``."""
    text = text.strip()
    if text == "true":
        return TimeRange(0, _LAST_SECOND)
    parts = text.split("-")
    if len(parts) != 2:
        raise InvalidTimeWindow(f"invalid time range: {text!r}")
    try:
        start, end = parse_time(parts[0]), parse_time(parts[1])
    except InvalidTimeWindow:
        raise InvalidTimeWindow(f"invalid time range: {text!r}") from None
    if start > end:
        raise InvalidTimeWindow(
            f"start of the time range must be less than or equal to the end of it: {text!r}"
        )
    return TimeRange(start, end)


def parse_time_ranges(text: str) -> tuple[TimeRange, ...]:
    """Comma-separated ranges, unmerged, in the order given."""
    return tuple(parse_time_range(part) for part in text.split(",") if part.strip())


def merge_ranges(ranges: Iterable[TimeRange]) -> tuple[TimeRange, ...]:
    """Sort and merge ranges that overlap or touch (next start <= previous end + 1 s)."""
    merged: list[TimeRange] = []
    for r in sorted(ranges):
        if merged and r.start <= merged[-1].end + 1:
            last = merged[-1]
            merged[-1] = TimeRange(last.start, max(last.end, r.end))
        else:
            merged.append(r)
    return tuple(merged)


def parse_day_time_ranges(value: str) -> DayWindow:
    """One condition value ``D/ranges/Timezone``, with its ranges merged."""
    if not isinstance(value, str):
        raise InvalidTimeWindow(f"time window must be a string, got {value!r}")
    parts = value.strip().split("/", 2)
    day = parts[0].strip()
    if len(day) != 1 or day not in DAY_LETTERS:
        raise InvalidTimeWindow(
            f"invalid day of the week {day!r} in {value!r}, must be one of "
            f"{', '.join(DAY_LETTERS)} (one day per value)"
        )
    if len(parts) < 3 or not parts[2].strip():
        raise InvalidTimeWindow(f"timezone is required in {value!r}")
    timezone = parts[2].strip()
    load_timezone(timezone)
    ranges = merge_ranges(parse_time_ranges(parts[1]))
    return DayWindow(DAY_LETTERS.index(day), ranges, timezone)


def parse_schedule(values: Iterable[str]) -> Schedule:
    """All values of a condition, merged per (day, timezone)."""
    grouped: dict[tuple[int, str], list[TimeRange]] = {}
    for value in values:
        window = parse_day_time_ranges(value)
        grouped.setdefault((window.day, window.timezone), []).extend(window.ranges)
    windows = tuple(
        DayWindow(day, merge_ranges(ranges), tz) for (day, tz), ranges in grouped.items()
    )
    return Schedule(windows)


def _offset(tz: zoneinfo.ZoneInfo, ts: float) -> float:
    offset = datetime.fromtimestamp(ts, tz).utcoffset()
    assert offset is not None
    return offset.total_seconds()


def _second_of_day(local: datetime) -> int:
    return local.hour * 3600 + local.minute * 60 + local.second


def _range_at(window: DayWindow, day: date, local: datetime) -> TimeRange | None:
    if local.date() != day:
        return None
    sod = _second_of_day(local)
    for r in window.ranges:
        if r.start <= sod <= r.end:
            return r
    return None


def _first_offset_change(
    tz: zoneinfo.ZoneInfo, after: float, until: float, offset: float
) -> int | None:
    """The first whole second in (after, until] with another UTC offset, if any."""
    hi = math.ceil(until)
    if _offset(tz, hi) == offset:
        return None
    lo = math.floor(after)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(tz, mid) == offset:
            lo = mid
        else:
            hi = mid
    return hi


def _window_end(window: DayWindow, ts: float) -> float | None:
    tz = load_timezone(window.timezone)
    local = datetime.fromtimestamp(ts, tz)
    if local.weekday() != window.day:
        return None
    day = local.date()
    current = _range_at(window, day, local)
    if current is None:
        return None
    midnight = datetime.combine(day, time())
    u = ts
    # Each turn crosses one tz transition; a day holds at most one in practice.
    for _ in range(8):
        offset = _offset(tz, u)
        wall_end = midnight + timedelta(seconds=current.end + 1)
        u_end = (wall_end - _EPOCH).total_seconds() - offset
        jump = _first_offset_change(tz, u, u_end, offset)
        if jump is None:
            return u_end
        after_jump = _range_at(window, day, datetime.fromtimestamp(jump, tz))
        if after_jump is None:
            return float(jump)
        current, u = after_jump, float(jump)
    return u_end


def evaluate(schedule: Schedule, now: Instant) -> WindowState:
    """Whether ``now`` is inside any window, and when the latest such window ends."""
    ts = to_timestamp(now)
    best: float | None = None
    for window in schedule.windows:
        end = _window_end(window, ts)
        if end is not None and (best is None or end > best):
            best = end
    return WindowState(best is not None, best)
