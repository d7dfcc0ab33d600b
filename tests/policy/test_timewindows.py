"""Tests for firezone.policy.timewindows: parsing, merging, evaluation across DST."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.policy.errors import InvalidCondition
from firezone.policy.timewindows import (
    DayWindow,
    InvalidTimeWindow,
    Schedule,
    TimeRange,
    evaluate,
    merge_ranges,
    parse_day_time_ranges,
    parse_schedule,
    parse_time,
    parse_time_range,
)


def utc(text: str) -> float:
    """Unix seconds of an ISO UTC timestamp without offset."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def hms(h: int, m: int = 0, s: int = 0) -> int:
    return h * 3600 + m * 60 + s


WHOLE_DAY = TimeRange(0, 86399)

# 2026 DST transitions (UTC instants).
BERLIN_SPRING = utc("2026-03-29T01:00:00")  # 02:00 CET -> 03:00 CEST
BERLIN_FALL = utc("2026-10-25T01:00:00")  # 03:00 CEST -> 02:00 CET
NEW_YORK_SPRING = utc("2026-03-08T07:00:00")  # 02:00 EST -> 03:00 EDT
NEW_YORK_FALL = utc("2026-11-01T06:00:00")  # 02:00 EDT -> 01:00 EST


class ParseTests(SynchronousTestCase):
    def test_times(self) -> None:
        """H, H:MM and H:MM:SS parse to seconds since midnight."""
        for text, expected in [
            ("0", 0),
            ("9", hms(9)),
            ("09", hms(9)),
            ("9:5", hms(9, 5)),
            ("09:05", hms(9, 5)),
            ("23:59:59", hms(23, 59, 59)),
            (" 17:00 ", hms(17)),
        ]:
            with self.subTest(text=text):
                self.assertEqual(parse_time(text), expected)

    def test_bad_times(self) -> None:
        """Out-of-range or malformed times are refused."""
        for text in ["24", "25:00", "12:60", "12:00:60", "123", "1:2:3:4", "", "a", "-1", "9.5"]:
            with self.subTest(text=text):
                self.assertRaises(InvalidTimeWindow, parse_time, text)

    def test_time_ranges(self) -> None:
        """Ranges mix time forms; 'true' is the whole day, start may equal end."""
        for text, expected in [
            ("08:00:00-17:00:00", TimeRange(hms(8), hms(17))),
            ("08:00-17:00:00", TimeRange(hms(8), hms(17))),
            ("08-17", TimeRange(hms(8), hms(17))),
            ("08:00:00-17", TimeRange(hms(8), hms(17))),
            ("true", WHOLE_DAY),
            ("10-10", TimeRange(hms(10), hms(10))),
        ]:
            with self.subTest(text=text):
                self.assertEqual(parse_time_range(text), expected)

    def test_bad_time_ranges(self) -> None:
        """Reference error cases: trailing '-', bad times, reversed ranges."""
        for text, fragment in [
            ("08:00:00-17:00:00-", "invalid time range"),
            ("25-17:00:00", "invalid time range"),
            ("08:00:00-25", "invalid time range"),
            ("08:00:00-33", "invalid time range"),
            ("17:00:00-08:00:00", "start of the time range must be less than or equal"),
            ("false", "invalid time range"),
            ("9", "invalid time range"),
        ]:
            with self.subTest(text=text):
                with self.assertRaises(InvalidTimeWindow) as ctx:
                    parse_time_range(text)
                self.assertIn(fragment, str(ctx.exception))

    def test_day_values(self) -> None:
        """Each of the seven letters maps to its weekday; timezones may contain '/'."""
        for index, day in enumerate("MTWRFSU"):
            with self.subTest(day=day):
                self.assertEqual(
                    parse_day_time_ranges(f"{day}/true/US/Pacific"),
                    DayWindow(index, (WHOLE_DAY,), "US/Pacific"),
                )
        self.assertEqual(
            parse_day_time_ranges("M/08:00:00-17:00:00,22:00:00-23:59:59/America/Merida"),
            DayWindow(0, (TimeRange(hms(8), hms(17)), TimeRange(hms(22), 86399)), "America/Merida"),
        )

    def test_bad_day_values(self) -> None:
        """Bad day letters, missing or unknown timezones are refused with a clear message."""
        for value, fragment in [
            ("X/08:00:00-17:00:00/UTC", "invalid day of the week"),
            ("MT/true/UTC", "one day per value"),
            ("m/true/UTC", "invalid day of the week"),
            ("/true/UTC", "invalid day of the week"),
            ("M/true", "timezone is required"),
            ("M/true/", "timezone is required"),
            ("M", "timezone is required"),
            ("M/true/invalid", "invalid timezone"),
            ("M/true/Europe/Atlantis", "invalid timezone"),
            ("M/true/../../etc/passwd", "invalid timezone"),
            ("M/true/localtime", "invalid timezone"),
            ("M/08:00:00-17:00:00-/UTC", "invalid time range"),
            ("M/not-a-range/UTC", "invalid time range"),
        ]:
            with self.subTest(value=value):
                with self.assertRaises(InvalidTimeWindow) as ctx:
                    parse_day_time_ranges(value)
                self.assertIn(fragment, str(ctx.exception))

    def test_errors_are_invalid_condition(self) -> None:
        """Time-window errors are InvalidCondition (and ValueError) for callers."""
        self.assertRaises(InvalidCondition, parse_day_time_ranges, "M/true/Nowhere")
        self.assertRaises(ValueError, parse_day_time_ranges, "M/true/Nowhere")

    def test_empty_range_list(self) -> None:
        """'M//UTC' is accepted (as by the reference) and never matches."""
        window = parse_day_time_ranges("M//UTC")
        self.assertEqual(window.ranges, ())
        self.assertFalse(evaluate(Schedule((window,)), utc("2026-03-30T12:00:00")).inside)

    def test_schedule_merges_per_day_and_zone(self) -> None:
        """Values for the same day and zone merge; other zones stay apart."""
        schedule = parse_schedule(
            [
                "M/true/UTC",
                "W/19:00:00-22:00:00/UTC",
                "M/10:00:00-11:00:00/UTC",
                "M/9-10/Asia/Tokyo",
            ]
        )
        self.assertEqual(
            set(schedule.windows),
            {
                DayWindow(0, (WHOLE_DAY,), "UTC"),
                DayWindow(2, (TimeRange(hms(19), hms(22)),), "UTC"),
                DayWindow(0, (TimeRange(hms(9), hms(10)),), "Asia/Tokyo"),
            },
        )


class MergeTests(SynchronousTestCase):
    def test_reference_merge_cases(self) -> None:
        """The reference merge_joint_time_ranges cases give the same merged ranges."""

        def r(a: int, b: int) -> TimeRange:
            return TimeRange(hms(a), hms(b))

        cases = [
            ([r(9, 10), r(10, 11)], (r(9, 11),)),
            ([r(9, 12), r(10, 11)], (r(9, 12),)),
            ([r(9, 10), r(11, 12), r(10, 11)], (r(9, 12),)),
            ([r(9, 12), r(11, 12), r(10, 11), r(9, 10), r(1, 10)], (r(1, 12),)),
            ([r(9, 12), r(11, 13), r(10, 11), r(2, 5), r(1, 8)], (r(1, 8), r(9, 13))),
            ([r(9, 10), r(12, 13)], (r(9, 10), r(12, 13))),
        ]
        for given_, expected in cases:
            with self.subTest(ranges=given_):
                self.assertEqual(merge_ranges(given_), expected)

    def test_touching_by_one_second_merges(self) -> None:
        """With inclusive end seconds, 09:00-10:00 and 10:00:01-11:00 are one window."""
        merged = merge_ranges([TimeRange(hms(10, 0, 1), hms(11)), TimeRange(hms(9), hms(10))])
        self.assertEqual(merged, (TimeRange(hms(9), hms(11)),))
        apart = merge_ranges([TimeRange(hms(10, 0, 2), hms(11)), TimeRange(hms(9), hms(10))])
        self.assertEqual(len(apart), 2)


def state(values: list[str], when: str | float) -> tuple[bool, float | None]:
    ts = utc(when) if isinstance(when, str) else when
    result = evaluate(parse_schedule(values), ts)
    return result.inside, result.expires_at


class EvaluateTests(SynchronousTestCase):
    def test_inside_and_expiry(self) -> None:
        """Inside a range, expiry is local end + 1 s (inclusive end second) in UTC."""
        values = ["M/09:00-17:00/Europe/Berlin"]  # 2026-03-30 is a Monday, CEST (+2)
        self.assertEqual(state(values, "2026-03-30T07:00:00"), (True, utc("2026-03-30T15:00:01")))
        self.assertEqual(
            state(values, "2026-03-30T14:59:59.999"), (True, utc("2026-03-30T15:00:01"))
        )
        self.assertEqual(state(values, "2026-03-30T15:00:00.5"), (True, utc("2026-03-30T15:00:01")))
        self.assertEqual(state(values, "2026-03-30T15:00:01"), (False, None))
        self.assertEqual(state(values, "2026-03-30T06:59:59.9"), (False, None))
        self.assertEqual(state(values, "2026-03-31T08:00:00"), (False, None))  # Tuesday

    def test_whole_day_expires_at_local_midnight(self) -> None:
        """'true' holds all day and expires at the next local midnight."""
        values = ["R/true/America/New_York"]  # 2026-04-02 is a Thursday, EDT (-4)
        self.assertEqual(state(values, "2026-04-02T04:00:00"), (True, utc("2026-04-03T04:00:00")))
        self.assertEqual(state(values, "2026-04-03T03:59:59.9"), (True, utc("2026-04-03T04:00:00")))
        self.assertEqual(state(values, "2026-04-03T04:00:00"), (False, None))

    def test_latest_expiry_among_values(self) -> None:
        """When several values hold, the latest expiry is returned."""
        values = ["M/09:00-12:00/UTC", "M/08:00-18:00/Europe/London"]  # London = BST (+1)
        self.assertEqual(state(values, "2026-03-30T10:00:00"), (True, utc("2026-03-30T17:00:01")))

    def test_adjacent_days_are_not_chained(self) -> None:
        """M/true + T/true expires at midnight, like the reference."""
        values = ["M/true/UTC", "T/true/UTC"]
        self.assertEqual(state(values, "2026-03-30T23:00:00"), (True, utc("2026-03-31T00:00:00")))

    def test_datetime_and_float_agree(self) -> None:
        """An aware datetime and its unix seconds give the same result; naive is refused."""
        schedule = parse_schedule(["M/9-17/UTC"])
        moment = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)
        self.assertEqual(evaluate(schedule, moment), evaluate(schedule, moment.timestamp()))
        other_zone = moment.astimezone(ZoneInfo("Asia/Tokyo"))
        self.assertEqual(evaluate(schedule, other_zone), evaluate(schedule, moment))
        self.assertRaises(ValueError, evaluate, schedule, datetime(2026, 3, 30, 12, 0))


class DstTests(SynchronousTestCase):
    """Windows around the 2026 transitions of Europe/Berlin and America/New_York."""

    def test_berlin_spring_end_in_gap(self) -> None:
        """A range ending in the skipped hour ends at the jump (01:00Z), not later."""
        values = ["U/01:00-02:30/Europe/Berlin"]
        self.assertEqual(state(values, "2026-03-29T00:30:00"), (True, BERLIN_SPRING))
        self.assertEqual(state(values, BERLIN_SPRING - 0.5), (True, BERLIN_SPRING))
        self.assertEqual(state(values, BERLIN_SPRING), (False, None))

    def test_berlin_spring_range_inside_gap_never_holds(self) -> None:
        """A range wholly inside the skipped hour never holds that day."""
        values = ["U/02:15-02:45/Europe/Berlin"]
        for offset in range(-7200, 7200, 60):
            with self.subTest(offset=offset):
                self.assertFalse(state(values, BERLIN_SPRING + offset)[0])

    def test_berlin_spring_start_in_gap(self) -> None:
        """A range starting in the gap holds from the jump (03:00 CEST) on."""
        values = ["U/02:30-05:00/Europe/Berlin"]
        self.assertEqual(state(values, BERLIN_SPRING - 1), (False, None))
        self.assertEqual(state(values, BERLIN_SPRING), (True, utc("2026-03-29T03:00:01")))

    def test_berlin_spring_short_day(self) -> None:
        """The 23-hour day: 'true' runs from 23:00Z to 22:00Z."""
        values = ["U/true/Europe/Berlin"]
        self.assertEqual(state(values, "2026-03-28T22:59:59"), (False, None))
        self.assertEqual(state(values, "2026-03-28T23:00:00"), (True, utc("2026-03-29T22:00:00")))
        self.assertEqual(state(values, "2026-03-29T12:00:00"), (True, utc("2026-03-29T22:00:00")))

    def test_berlin_fall_repeated_hour(self) -> None:
        """A range within the repeated hour holds during both occurrences."""
        values = ["U/01:30-02:30/Europe/Berlin"]
        # 01:45 CEST: the first pass ends at 02:30:01 CEST = 00:30:01Z.
        self.assertEqual(state(values, "2026-10-24T23:45:00"), (True, utc("2026-10-25T00:30:01")))
        # 02:45 CEST: outside.
        self.assertEqual(state(values, "2026-10-25T00:45:00"), (False, None))
        # 02:10 CET: the second pass ends at 02:30:01 CET = 01:30:01Z.
        self.assertEqual(state(values, "2026-10-25T01:10:00"), (True, utc("2026-10-25T01:30:01")))

    def test_berlin_fall_window_continues_through_jump(self) -> None:
        """When the jump back lands inside the range, the window goes on."""
        values = ["U/02:00-02:59:59/Europe/Berlin"]
        self.assertEqual(state(values, "2026-10-25T00:10:00"), (True, utc("2026-10-25T02:00:00")))

    def test_berlin_fall_jump_into_other_range(self) -> None:
        """Jumping back from one range into another of the same day keeps the window."""
        values = ["U/01:00-02:10,02:40-03:30/Europe/Berlin"]
        # 02:50 CEST is in the second range; at 01:00Z the clock reads 02:00 CET,
        # inside the first range, which lasts until 02:10:01 CET = 01:10:01Z.
        self.assertEqual(state(values, "2026-10-25T00:50:00"), (True, utc("2026-10-25T01:10:01")))

    def test_berlin_fall_long_day(self) -> None:
        """The 25-hour day: 'true' runs from 22:00Z to 23:00Z the next day."""
        values = ["U/true/Europe/Berlin"]
        self.assertEqual(state(values, "2026-10-24T22:00:00"), (True, utc("2026-10-25T23:00:00")))

    def test_new_york_spring(self) -> None:
        """America/New_York 2026-03-08: 02:00 EST jumps to 03:00 EDT at 07:00Z."""
        self.assertEqual(
            state(["U/01:00-02:30/America/New_York"], "2026-03-08T06:30:00"),
            (True, NEW_YORK_SPRING),
        )
        self.assertEqual(
            state(["U/true/America/New_York"], "2026-03-08T12:00:00"),
            (True, utc("2026-03-09T04:00:00")),
        )
        self.assertEqual(
            state(["U/02:00-03:00/America/New_York"], NEW_YORK_SPRING),
            (True, utc("2026-03-08T07:00:01")),
        )

    def test_new_york_fall(self) -> None:
        """America/New_York 2026-11-01: 02:00 EDT falls back to 01:00 EST at 06:00Z."""
        self.assertEqual(
            state(["U/01:00-01:59:59/America/New_York"], "2026-11-01T05:10:00"),
            (True, utc("2026-11-01T07:00:00")),
        )
        values = ["U/01:30-01:45/America/New_York"]
        self.assertEqual(state(values, "2026-11-01T05:40:00"), (True, utc("2026-11-01T05:45:01")))
        self.assertEqual(state(values, "2026-11-01T05:50:00"), (False, None))
        self.assertEqual(state(values, "2026-11-01T06:35:00"), (True, utc("2026-11-01T06:45:01")))
        self.assertEqual(
            state(["S/23:00-23:59:59/America/New_York"], "2026-11-01T03:30:00"),
            (True, utc("2026-11-01T04:00:00")),
        )


# --- brute-force oracle -------------------------------------------------------

STEP = 45.0  # generated ranges leave gaps of at least 59 s, so this cannot skip one


def brute_member(window: DayWindow, ts: float) -> bool:
    local = datetime.fromtimestamp(ts, ZoneInfo(window.timezone))
    if local.weekday() != window.day:
        return False
    sod = local.hour * 3600 + local.minute * 60 + local.second
    return any(r.start <= sod <= r.end for r in window.ranges)


def brute_end(window: DayWindow, ts: float) -> float:
    """Walk forward from ts until the window stops holding; exits fall on whole seconds."""
    previous = ts
    current = ts + STEP
    while brute_member(window, current):
        previous, current = current, current + STEP
    second = math.floor(previous) + 1
    while brute_member(window, second):
        second += 1
    return float(second)


def brute_evaluate(schedule: Schedule, ts: float) -> tuple[bool, float | None]:
    ends = [brute_end(w, ts) for w in schedule.windows if brute_member(w, ts)]
    return (bool(ends), max(ends) if ends else None)


MINUTE_OF_DAY = st.one_of(
    st.integers(0, 24 * 60 - 1),
    st.integers(0, 4 * 60),  # the hours around the transitions
)


@st.composite
def range_texts(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:
        return "true"
    a, b = sorted((draw(MINUTE_OF_DAY), draw(MINUTE_OF_DAY)))
    return f"{a // 60}:{a % 60:02d}-{b // 60}:{b % 60:02d}"


@st.composite
def schedules(draw: st.DrawFn, zone: str) -> list[str]:
    values = []
    for _ in range(draw(st.integers(1, 3))):
        day = draw(st.sampled_from("UUUUSMTWRF"))
        ranges = draw(st.lists(range_texts(), min_size=1, max_size=3))
        values.append(f"{day}/{','.join(ranges)}/{zone}")
    return values


@st.composite
def instants_near(draw: st.DrawFn, transition: float) -> float:
    span = draw(st.sampled_from([4 * 3600, 3 * 86400]))
    whole = draw(st.integers(-span, span))
    fraction = draw(st.sampled_from([0.0, 0.25, 0.999]))
    return transition + whole + fraction


CASES = st.sampled_from(
    [
        ("Europe/Berlin", BERLIN_SPRING),
        ("Europe/Berlin", BERLIN_FALL),
        ("America/New_York", NEW_YORK_SPRING),
        ("America/New_York", NEW_YORK_FALL),
    ]
)


class DstOracleTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_agrees_with_brute_force(self, data: st.DataObject) -> None:
        """evaluate() equals a second-by-second walk of the wall clock across the 2026 DST weeks."""
        zone, transition = data.draw(CASES)
        values = data.draw(schedules(zone))
        ts = data.draw(instants_near(transition))
        schedule = parse_schedule(values)
        result = evaluate(schedule, ts)
        self.assertEqual((result.inside, result.expires_at), brute_evaluate(schedule, ts))
        if result.inside:
            assert result.expires_at is not None
            self.assertGreater(result.expires_at, ts)
            self.assertLessEqual(result.expires_at, ts + 25 * 3600 + 1)

    def test_oracle_sees_a_missed_jump(self) -> None:
        """The oracle itself tells a spring-forward end from a naive wall-clock end."""
        window = parse_day_time_ranges("U/01:00-02:30/Europe/Berlin")
        naive_end = utc("2026-03-29T01:30:01")  # 02:30:01 at the pre-jump offset
        self.assertEqual(brute_end(window, utc("2026-03-29T00:30:00")), BERLIN_SPRING)
        self.assertNotEqual(BERLIN_SPRING, naive_end)

    def test_every_minute_of_the_fall_back_day(self) -> None:
        """Stepping each minute across the Berlin fall-back day matches the oracle."""
        schedule = parse_schedule(["U/01:30-02:30,02:45-04:00/Europe/Berlin"])
        start = utc("2026-10-24T22:00:00")
        for minute in range(0, 25 * 60, 7):
            ts = start + minute * 60 + 13
            with self.subTest(minute=minute):
                result = evaluate(schedule, ts)
                self.assertEqual((result.inside, result.expires_at), brute_evaluate(schedule, ts))
