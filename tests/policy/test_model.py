"""Tests for firezone.policy.model: shapes and normalisation of the engine's values."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta, timezone

from twisted.trial.unittest import SynchronousTestCase

from firezone.policy.model import (
    Condition,
    Filter,
    Policy,
    PortRange,
    Resource,
    Subject,
    to_timestamp,
)


class ToTimestampTests(SynchronousTestCase):
    def test_values(self) -> None:
        """Numbers pass through; aware datetimes convert; naive ones and others are refused."""
        self.assertEqual(to_timestamp(10), 10.0)
        self.assertEqual(to_timestamp(1.5), 1.5)
        self.assertEqual(
            to_timestamp(datetime(1970, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))), 0.0
        )
        self.assertEqual(to_timestamp(datetime(1970, 1, 2, tzinfo=UTC)), 86400.0)
        self.assertRaises(ValueError, to_timestamp, datetime(2026, 1, 1))
        self.assertRaises(TypeError, to_timestamp, "2026-01-01")
        self.assertRaises(TypeError, to_timestamp, True)


class ValueTests(SynchronousTestCase):
    def test_subject_normalisation(self) -> None:
        """Subject converts groups, IP, country case and token expiry."""
        s = Subject(
            "a",
            "admin",
            group_ids=["g1", "g1", "g2"],  # type: ignore[arg-type]
            remote_ip="2001:db8::1",  # type: ignore[arg-type]
            remote_country=" de",
            token_expires_at=datetime(1970, 1, 1, 0, 1, tzinfo=UTC),  # type: ignore[arg-type]
        )
        self.assertEqual(s.group_ids, frozenset({"g1", "g2"}))
        self.assertEqual(s.remote_ip, ipaddress.ip_address("2001:db8::1"))
        self.assertEqual(s.remote_country, "DE")
        self.assertEqual(s.token_expires_at, 60.0)
        self.assertIsNone(Subject("a", "user", remote_country="").remote_country)
        self.assertIsNone(Subject("a", "user", remote_country="XX").remote_country)

    def test_subject_rejects_bad_values(self) -> None:
        """Unknown actor types and malformed IPs are refused."""
        self.assertRaises(ValueError, Subject, "a", "api_client")
        self.assertRaises(ValueError, Subject, "a", "user", remote_ip="300.0.0.1")

    def test_hashable_values(self) -> None:
        """Conditions, policies, filters and resources are hashable (lists become tuples)."""
        c = Condition("remote_ip", "is_in_cidr", ["10.0.0.0/8"])  # type: ignore[arg-type]
        p = Policy("p", "g", "r", [c])  # type: ignore[arg-type]
        f = Filter("tcp", [(80, 80)])  # type: ignore[arg-type]
        r = Resource("r", "cidr", "10.0.0.0/8", filters=[f], site_id="s")  # type: ignore[arg-type]
        self.assertEqual(len({c, Condition("remote_ip", "is_in_cidr", ("10.0.0.0/8",))}), 1)
        self.assertEqual(p.conditions, (c,))
        self.assertEqual(f.ports, (PortRange(80, 80),))
        self.assertEqual(
            hash(r), hash(Resource("r", "cidr", "10.0.0.0/8", filters=(f,), site_id="s"))
        )
        self.assertRaises(TypeError, Condition, "remote_ip", "is_in_cidr", (1,))

    def test_resource_checks_enums(self) -> None:
        """Resource refuses unknown types and IP stacks."""
        self.assertRaises(ValueError, Resource, "r", "static_device_pool")
        self.assertRaises(ValueError, Resource, "r", "dns", "a.example", ip_stack="both")
