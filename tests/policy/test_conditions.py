"""Tests for firezone.policy.conditions: validation and evaluation of each property."""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.trial.unittest import SynchronousTestCase

from firezone.policy.conditions import (
    ConditionResult,
    InvalidCondition,
    evaluate_condition,
    evaluate_conditions,
    parse_condition,
    parse_conditions,
    validate_condition,
)
from firezone.policy.errors import InvalidTimeWindow
from firezone.policy.model import Condition, Subject

PROVIDER = "7b2f7c3e-1d2a-4c5b-9e8f-0a1b2c3d4e5f"
OTHER_PROVIDER = "00000000-0000-0000-0000-000000000001"
# Monday 2026-03-30 12:00 UTC.
NOON = datetime(2026, 3, 30, 12, 0, tzinfo=UTC).timestamp()


def subject(**overrides: object) -> Subject:
    fields: dict[str, object] = {
        "actor_id": "actor",
        "actor_type": "user",
        "remote_ip": "192.168.0.1",
        "remote_country": "US",
        "auth_provider_id": PROVIDER,
        "client_verified": True,
    }
    fields.update(overrides)
    return Subject(**fields)  # type: ignore[arg-type]


def cond(prop: str, op: str, *values: str) -> Condition:
    return parse_condition({"property": prop, "operator": op, "values": list(values)})


class ParseConditionTests(SynchronousTestCase):
    def test_valid_and_normalised(self) -> None:
        """Accepted values come back in their normal form."""
        cases = [
            (("remote_ip_location_region", "is_in", ["us", " CA "]), ("US", "CA")),
            (("remote_ip_location_region", "is_not_in", ["GB"]), ("GB",)),
            (("remote_ip", "is_in_cidr", ["10.0.0.0/8"]), ("10.0.0.0/8",)),
            (("remote_ip", "is_in_cidr", ["192.168.0.1/24"]), ("192.168.0.0/24",)),
            (("remote_ip", "is_not_in_cidr", ["192.168.0.1"]), ("192.168.0.1/32",)),
            (("remote_ip", "is_in_cidr", ["2001:DB8::1"]), ("2001:db8::1/128",)),
            (("auth_provider_id", "is_in", [PROVIDER.upper()]), (PROVIDER,)),
            (("auth_provider_id", "is_not_in", [PROVIDER]), (PROVIDER,)),
            (
                ("current_utc_datetime", "is_in_day_of_week_time_ranges", [" M/09:00-17:00/UTC "]),
                ("M/09:00-17:00/UTC",),
            ),
            (("client_verified", "is", ["TRUE"]), ("true",)),
            (("client_verified", "is", ["false"]), ("false",)),
        ]
        for (prop, op, values), expected in cases:
            with self.subTest(prop=prop, op=op, values=values):
                parsed = parse_condition({"property": prop, "operator": op, "values": values})
                self.assertEqual(parsed, Condition(prop, op, expected))

    def test_bool_values_for_client_verified(self) -> None:
        """JSON booleans are accepted for client_verified."""
        parsed = parse_condition(
            {"property": "client_verified", "operator": "is", "values": [True]}
        )
        self.assertEqual(parsed.values, ("true",))

    def test_invalid(self) -> None:
        """Every kind of bad input raises InvalidCondition naming the problem."""
        cases: list[tuple[dict[str, object], str]] = [
            ({"property": "device_os", "operator": "is", "values": ["x"]}, "unknown property"),
            ({"property": "remote_ip", "operator": "is_in", "values": ["10.0.0.0/8"]}, "operator"),
            (
                {"property": "remote_ip_location_region", "operator": "is", "values": ["US"]},
                "operator",
            ),
            ({"property": "auth_provider_id", "operator": "is", "values": [PROVIDER]}, "operator"),
            (
                {"property": "current_utc_datetime", "operator": "is_in", "values": ["M/9-17/UTC"]},
                "operator",
            ),
            ({"property": "client_verified", "operator": "is_in", "values": ["true"]}, "operator"),
            (
                {
                    "property": "remote_ip_location_region",
                    "operator": "is_in",
                    "values": ["NOTACODE"],
                },
                "ISO 3166",
            ),
            (
                {"property": "remote_ip_location_region", "operator": "is_in", "values": ["XX"]},
                "ISO",
            ),
            ({"property": "remote_ip", "operator": "is_in_cidr", "values": ["not-an-ip"]}, "CIDR"),
            (
                {"property": "remote_ip", "operator": "is_in_cidr", "values": ["10.0.0.0/33"]},
                "CIDR",
            ),
            (
                {"property": "auth_provider_id", "operator": "is_in", "values": ["not-a-uuid"]},
                "UUID",
            ),
            (
                {
                    "property": "current_utc_datetime",
                    "operator": "is_in_day_of_week_time_ranges",
                    "values": ["M/not-a-range/UTC"],
                },
                "invalid time range",
            ),
            (
                {
                    "property": "current_utc_datetime",
                    "operator": "is_in_day_of_week_time_ranges",
                    "values": ["M/09:00-17:00"],
                },
                "timezone is required",
            ),
            (
                {
                    "property": "current_utc_datetime",
                    "operator": "is_in_day_of_week_time_ranges",
                    "values": ["M/09:00-17:00/Mars/Olympus"],
                },
                "invalid timezone",
            ),
            (
                {"property": "client_verified", "operator": "is", "values": ["true", "false"]},
                "exactly one",
            ),
            ({"property": "client_verified", "operator": "is", "values": []}, "at least one"),
            ({"property": "client_verified", "operator": "is", "values": ["yes"]}, "true or false"),
            (
                {"property": "remote_ip_location_region", "operator": "is_in", "values": []},
                "at least one",
            ),
            (
                {
                    "property": "remote_ip_location_region",
                    "operator": "is_in",
                    "values": ["US", "us"],
                },
                "duplicates",
            ),
            ({"property": "remote_ip", "operator": "is_in_cidr", "values": "10.0.0.0/8"}, "list"),
            ({"property": "remote_ip", "operator": "is_in_cidr", "values": [10]}, "strings"),
            ({"operator": "is_in", "values": ["US"]}, "property is required"),
            ({"property": "remote_ip"}, "operator is required"),
            ({"property": "remote_ip", "operator": "is_in_cidr", "values": [], "x": 1}, "unknown"),
        ]
        for data, fragment in cases:
            with self.subTest(data=data):
                with self.assertRaises(InvalidCondition) as ctx:
                    parse_condition(data)
                self.assertIn(fragment, str(ctx.exception))

    def test_not_a_mapping(self) -> None:
        """A non-object condition is refused."""
        self.assertRaises(InvalidCondition, parse_condition, ["remote_ip"])  # type: ignore[arg-type]

    def test_time_window_error_keeps_its_type(self) -> None:
        """A bad time window surfaces as InvalidTimeWindow, an InvalidCondition."""
        with self.assertRaises(InvalidTimeWindow):
            cond("current_utc_datetime", "is_in_day_of_week_time_ranges", "Q/true/UTC")

    def test_parse_conditions_and_round_trip(self) -> None:
        """A list parses in order and to_dict gives back parseable input."""
        items = [
            {"property": "remote_ip", "operator": "is_in_cidr", "values": ["10.0.0.1/8"]},
            {"property": "client_verified", "operator": "is", "values": ["true"]},
        ]
        parsed = parse_conditions(items)
        self.assertEqual([c.property for c in parsed], ["remote_ip", "client_verified"])
        self.assertEqual(parse_conditions([c.to_dict() for c in parsed]), parsed)

    def test_validate_condition_is_idempotent(self) -> None:
        """Validating a normalised condition returns it unchanged."""
        c = cond("remote_ip", "is_in_cidr", "10.1.2.3/16")
        self.assertEqual(validate_condition(c), c)


class EvaluateConditionTests(SynchronousTestCase):
    def check(self, c: Condition, s: Subject, expected: bool) -> None:
        self.assertEqual(evaluate_condition(c, s, NOON), ConditionResult(expected, None))

    def test_region(self) -> None:
        """is_in / is_not_in on the country; an unknown country fails both."""
        is_in = cond("remote_ip_location_region", "is_in", "US", "CA")
        not_in = cond("remote_ip_location_region", "is_not_in", "US", "CA")
        for country, in_result, not_in_result in [
            ("US", True, False),
            ("ca", True, False),
            ("GB", False, True),
            (None, False, False),
        ]:
            with self.subTest(country=country):
                s = subject(remote_country=country)
                self.check(is_in, s, in_result)
                self.check(not_in, s, not_in_result)

    def test_remote_ip(self) -> None:
        """CIDR membership for v4, v6, bare IPs and mapped addresses; unknown IP fails."""
        is_in = cond("remote_ip", "is_in_cidr", "192.168.0.0/24", "2001:db8::/32", "10.1.1.1")
        not_in = cond("remote_ip", "is_not_in_cidr", "192.168.0.0/24", "2001:db8::/32", "10.1.1.1")
        for ip, member in [
            ("192.168.0.1", True),
            ("192.168.1.1", False),
            ("10.1.1.1", True),
            ("10.1.1.2", False),
            ("2001:db8::7", True),
            ("2001:db9::7", False),
            ("::ffff:192.168.0.9", True),
        ]:
            with self.subTest(ip=ip):
                s = subject(remote_ip=ip)
                self.check(is_in, s, member)
                self.check(not_in, s, not member)
        self.check(is_in, subject(remote_ip=None), False)
        self.check(not_in, subject(remote_ip=None), False)

    def test_auth_provider(self) -> None:
        """is_in / is_not_in on the provider id; an absent provider passes is_not_in."""
        is_in = cond("auth_provider_id", "is_in", PROVIDER)
        not_in = cond("auth_provider_id", "is_not_in", PROVIDER)
        self.check(is_in, subject(), True)
        self.check(not_in, subject(), False)
        self.check(is_in, subject(auth_provider_id=PROVIDER.upper()), True)
        self.check(is_in, subject(auth_provider_id=OTHER_PROVIDER), False)
        self.check(not_in, subject(auth_provider_id=OTHER_PROVIDER), True)
        self.check(is_in, subject(auth_provider_id=None), False)
        self.check(not_in, subject(auth_provider_id=None), True)

    def test_client_verified(self) -> None:
        """['true'] requires a verified device; ['false'] always passes."""
        required = cond("client_verified", "is", "true")
        optional = cond("client_verified", "is", "false")
        self.check(required, subject(client_verified=True), True)
        self.check(required, subject(client_verified=False), False)
        self.check(optional, subject(client_verified=True), True)
        self.check(optional, subject(client_verified=False), True)

    def test_time_window(self) -> None:
        """Inside the window the condition passes with the window's end as expiry."""
        c = cond("current_utc_datetime", "is_in_day_of_week_time_ranges", "M/09:00-17:00/UTC")
        end = datetime(2026, 3, 30, 17, 0, 1, tzinfo=UTC).timestamp()
        self.assertEqual(evaluate_condition(c, subject(), NOON), ConditionResult(True, end))
        evening = datetime(2026, 3, 30, 18, 0, tzinfo=UTC)
        self.assertEqual(evaluate_condition(c, subject(), evening), ConditionResult(False, None))

    def test_unvalidated_condition_fails(self) -> None:
        """A directly built invalid condition never passes and never raises."""
        for bad in [
            Condition("remote_ip", "is_in_cidr", ("garbage",)),
            Condition("remote_ip", "is_not_in_cidr", ("garbage",)),
            Condition("no_such_property", "is", ("x",)),
            Condition("remote_ip_location_region", "is_not_in", ()),
            Condition("current_utc_datetime", "is_in_day_of_week_time_ranges", ("M/x/UTC",)),
        ]:
            with self.subTest(condition=bad):
                self.assertFalse(evaluate_condition(bad, subject(), NOON).passed)


class EvaluateConditionsTests(SynchronousTestCase):
    def test_empty_passes_forever(self) -> None:
        """No conditions: pass with no expiry."""
        result = evaluate_conditions([], subject(), NOON)
        self.assertEqual(
            (result.passed, result.expires_at, result.violated_properties), (True, None, ())
        )

    def test_violations_in_order_without_repeats(self) -> None:
        """Violated properties are listed once each, in the order first met."""
        conditions = [
            cond("remote_ip", "is_in_cidr", "10.0.0.0/8"),
            cond("remote_ip_location_region", "is_in", "CN"),
            cond("remote_ip", "is_in_cidr", "172.16.0.0/12"),
            cond("client_verified", "is", "true"),
        ]
        result = evaluate_conditions(conditions, subject(), NOON)
        self.assertFalse(result.passed)
        self.assertIsNone(result.expires_at)
        self.assertEqual(result.violated_properties, ("remote_ip", "remote_ip_location_region"))

    def test_earliest_expiry(self) -> None:
        """The conjunction expires at the earliest window end."""
        conditions = [
            cond("current_utc_datetime", "is_in_day_of_week_time_ranges", "M/09:00-17:00/UTC"),
            cond("current_utc_datetime", "is_in_day_of_week_time_ranges", "M/11:00-13:30/UTC"),
            cond("client_verified", "is", "true"),
        ]
        result = evaluate_conditions(conditions, subject(), NOON)
        self.assertTrue(result.passed)
        self.assertEqual(
            result.expires_at, datetime(2026, 3, 30, 13, 30, 1, tzinfo=UTC).timestamp()
        )
