"""Tests for firezone.policy.engine: default deny, Everyone, expiry choice, violations."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.policy.conditions import evaluate_condition, evaluate_conditions, parse_condition
from firezone.policy.engine import (
    Allowed,
    Denied,
    applicable_policies,
    authorize,
    connectable_resources,
    effective_group_ids,
)
from firezone.policy.model import Condition, Policy, Resource, Subject

EVERYONE = "everyone"
ENGINEERS = "engineers"
PROVIDER = "7b2f7c3e-1d2a-4c5b-9e8f-0a1b2c3d4e5f"
OTHER_PROVIDER = "00000000-0000-0000-0000-000000000001"
NOON = datetime(2026, 3, 30, 12, 0, tzinfo=UTC).timestamp()  # a Monday
HOUR = 3600.0


def at(hour: int, minute: int = 0, second: int = 0) -> float:
    return datetime(2026, 3, 30, hour, minute, second, tzinfo=UTC).timestamp()


def cond(prop: str, op: str, *values: str) -> Condition:
    return parse_condition({"property": prop, "operator": op, "values": list(values)})


def window(text: str) -> Condition:
    return cond("current_utc_datetime", "is_in_day_of_week_time_ranges", text)


def subject(**overrides: object) -> Subject:
    fields: dict[str, object] = {
        "actor_id": "a1",
        "actor_type": "user",
        "group_ids": frozenset({ENGINEERS}),
        "remote_ip": "203.0.113.5",
        "remote_country": "DE",
        "auth_provider_id": PROVIDER,
        "client_verified": False,
        "token_expires_at": NOON + 7 * 24 * HOUR,
    }
    fields.update(overrides)
    return Subject(**fields)  # type: ignore[arg-type]


class EveryoneGroupTests(SynchronousTestCase):
    def test_users_and_admins_get_everyone(self) -> None:
        """Users and admins are members of Everyone; service accounts are not."""
        self.assertIn(EVERYONE, effective_group_ids(subject(actor_type="user"), EVERYONE))
        self.assertIn(EVERYONE, effective_group_ids(subject(actor_type="admin"), EVERYONE))
        self.assertNotIn(
            EVERYONE, effective_group_ids(subject(actor_type="service_account"), EVERYONE)
        )
        self.assertEqual(effective_group_ids(subject(), None), frozenset({ENGINEERS}))

    def test_everyone_policy_authorizes_users_only(self) -> None:
        """A policy on Everyone grants users but not service accounts."""
        policies = [Policy("p1", EVERYONE, "r1")]
        self.assertEqual(
            authorize(subject(group_ids=()), "r1", policies, NOON, everyone_group_id=EVERYONE),
            Allowed("p1", subject().token_expires_at),
        )
        self.assertEqual(
            authorize(
                subject(actor_type="service_account"),
                "r1",
                policies,
                NOON,
                everyone_group_id=EVERYONE,
            ),
            Denied("not_found"),
        )
        # Without the caller naming Everyone, nobody is in it.
        self.assertEqual(authorize(subject(), "r1", policies, NOON), Denied("not_found"))

    def test_service_account_with_explicit_membership(self) -> None:
        """A service account reaches resources through its explicit groups."""
        sa = subject(actor_type="service_account", token_expires_at=None)
        policies = [Policy("p1", ENGINEERS, "r1")]
        self.assertEqual(
            authorize(sa, "r1", policies, NOON, everyone_group_id=EVERYONE), Allowed("p1", None)
        )


class AuthorizeTests(SynchronousTestCase):
    def test_default_deny(self) -> None:
        """No policies, policies of other groups or other resources: not_found."""
        self.assertEqual(authorize(subject(), "r1", [], NOON), Denied("not_found"))
        self.assertEqual(
            authorize(subject(), "r1", [Policy("p1", "sales", "r1")], NOON), Denied("not_found")
        )
        self.assertEqual(
            authorize(subject(), "r1", [Policy("p1", ENGINEERS, "r2")], NOON), Denied("not_found")
        )

    def test_disabled_policy_counts_for_nothing(self) -> None:
        """A disabled policy neither grants nor turns not_found into forbidden."""
        policies = [Policy("p1", ENGINEERS, "r1", disabled=True)]
        self.assertEqual(authorize(subject(), "r1", policies, NOON), Denied("not_found"))
        failing = Policy("p2", ENGINEERS, "r1", (cond("client_verified", "is", "true"),))
        self.assertEqual(
            authorize(subject(), "r1", [*policies, failing], NOON),
            Denied("forbidden", ("client_verified",)),
        )

    def test_forbidden_lists_sorted_union(self) -> None:
        """When every policy fails, the violated properties of all are merged and sorted."""
        policies = [
            Policy("p1", ENGINEERS, "r1", (cond("remote_ip_location_region", "is_in", "US"),)),
            Policy(
                "p2",
                ENGINEERS,
                "r1",
                (
                    cond("client_verified", "is", "true"),
                    cond("remote_ip", "is_in_cidr", "10.0.0.0/8"),
                ),
            ),
            Policy("p3", ENGINEERS, "r1", (window("M/18:00-19:00/UTC"),)),
            Policy("p4", ENGINEERS, "r1", (cond("remote_ip_location_region", "is_in", "FR"),)),
        ]
        self.assertEqual(
            authorize(subject(), "r1", policies, NOON),
            Denied(
                "forbidden",
                (
                    "client_verified",
                    "current_utc_datetime",
                    "remote_ip",
                    "remote_ip_location_region",
                ),
            ),
        )

    def test_latest_condition_expiry_wins(self) -> None:
        """Among passing policies the one whose conditions expire latest is chosen."""
        policies = [
            Policy("short", ENGINEERS, "r1", (window("M/11:00-13:00/UTC"),)),
            Policy("long", ENGINEERS, "r1", (window("M/10:00-18:00/UTC"),)),
            Policy("fails", ENGINEERS, "r1", (window("M/20:00-21:00/UTC"),)),
        ]
        self.assertEqual(authorize(subject(), "r1", policies, NOON), Allowed("long", at(18, 0, 1)))

    def test_no_expiry_beats_any_expiry(self) -> None:
        """A passing policy without time conditions (never expires) beats one that expires."""
        policies = [
            Policy("windowed", ENGINEERS, "r1", (window("M/true/UTC"),)),
            Policy("forever", ENGINEERS, "r1", (cond("remote_ip_location_region", "is_in", "DE"),)),
        ]
        s = subject(token_expires_at=None)
        self.assertEqual(authorize(s, "r1", policies, NOON), Allowed("forever", None))
        self.assertEqual(
            authorize(s, "r1", list(reversed(policies)), NOON), Allowed("forever", None)
        )

    def test_ties_go_to_first_policy(self) -> None:
        """Equal expiries: the first passing policy in input order wins."""
        policies = [Policy("a", ENGINEERS, "r1"), Policy("b", ENGINEERS, "r1")]
        self.assertEqual(authorize(subject(), "r1", policies, NOON).policy_id, "a")  # type: ignore[union-attr]
        self.assertEqual(authorize(subject(), "r1", policies[::-1], NOON).policy_id, "b")  # type: ignore[union-attr]

    def test_token_expiry_caps_authorization(self) -> None:
        """expires_at = min(condition expiry, token expiry)."""
        policies = [Policy("p", ENGINEERS, "r1", (window("M/10:00-18:00/UTC"),))]
        self.assertEqual(
            authorize(subject(token_expires_at=at(14)), "r1", policies, NOON), Allowed("p", at(14))
        )
        self.assertEqual(
            authorize(subject(token_expires_at=at(20)), "r1", policies, NOON),
            Allowed("p", at(18, 0, 1)),
        )
        self.assertEqual(
            authorize(subject(token_expires_at=None), "r1", policies, NOON),
            Allowed("p", at(18, 0, 1)),
        )
        plain = [Policy("q", ENGINEERS, "r1")]
        self.assertEqual(
            authorize(subject(token_expires_at=at(14)), "r1", plain, NOON), Allowed("q", at(14))
        )

    def test_accepts_datetime_now(self) -> None:
        """now may be an aware datetime."""
        policies = [Policy("p", ENGINEERS, "r1", (window("M/10:00-18:00/UTC"),))]
        moment = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)
        self.assertEqual(
            authorize(subject(), "r1", policies, moment), authorize(subject(), "r1", policies, NOON)
        )

    def test_applicable_policies_order_and_filter(self) -> None:
        """applicable_policies keeps enabled policies of the subject's groups in order."""
        policies = [
            Policy("p1", ENGINEERS, "r1"),
            Policy("p2", "sales", "r1"),
            Policy("p3", EVERYONE, "r2"),
            Policy("p4", ENGINEERS, "r3", disabled=True),
        ]
        found = applicable_policies(subject(), policies, EVERYONE)
        self.assertEqual([p.id for p in found], ["p1", "p3"])


class ConnectableResourcesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.resources = {
            "r1": Resource("r1", "dns", "*.corp.example", ip_stack="dual", site_id="s1"),
            "r2": Resource("r2", "cidr", "10.0.0.0/8", site_id="s1"),
            "r3": Resource("r3", "internet", site_id="internet"),
            "r4": Resource("r4", "ip", "192.0.2.1", site_id=None),
            "r5": Resource("r5", "dns", "app.**.example", ip_stack="dual", site_id="s1"),
        }

    def test_lists_resources_with_passing_policies(self) -> None:
        """Only resources with a passing enabled policy, a site and a known id are listed."""
        policies = [
            Policy("p1", ENGINEERS, "r1"),
            Policy("p2", ENGINEERS, "r2", (cond("client_verified", "is", "true"),)),
            Policy("p3", EVERYONE, "r3"),
            Policy("p4", ENGINEERS, "r4"),
            Policy("p5", ENGINEERS, "r5", disabled=True),
            Policy("p6", ENGINEERS, "gone"),
            Policy("p7", "sales", "r5"),
        ]
        self.assertEqual(
            connectable_resources(
                subject(), policies, self.resources, NOON, everyone_group_id=EVERYONE
            ),
            {"r1", "r3"},
        )
        self.assertEqual(
            connectable_resources(
                subject(client_verified=True),
                policies,
                list(self.resources.values()),
                NOON,
                everyone_group_id=EVERYONE,
            ),
            {"r1", "r2", "r3"},
        )

    def test_one_passing_policy_is_enough(self) -> None:
        """A resource is connectable when any one of its policies passes."""
        policies = [
            Policy("p1", ENGINEERS, "r2", (cond("remote_ip_location_region", "is_in", "US"),)),
            Policy("p2", ENGINEERS, "r2", (cond("remote_ip_location_region", "is_in", "DE"),)),
        ]
        self.assertEqual(connectable_resources(subject(), policies, self.resources, NOON), {"r2"})
        self.assertEqual(
            connectable_resources(subject(remote_country=None), policies, self.resources, NOON),
            set(),
        )

    def test_version_gating(self) -> None:
        """Old clients lose the internet resource (< 1.3) and non-leading '**' patterns (< 1.2)."""
        policies = [Policy(f"p{i}", ENGINEERS, rid) for i, rid in enumerate(self.resources)]
        self.assertEqual(
            connectable_resources(
                subject(), policies, self.resources, NOON, client_version="1.1.9"
            ),
            {"r1", "r2"},
        )
        self.assertEqual(
            connectable_resources(
                subject(), policies, self.resources, NOON, client_version="1.2.0"
            ),
            {"r1", "r2", "r5"},
        )
        self.assertEqual(
            connectable_resources(
                subject(), policies, self.resources, NOON, client_version="1.5.12"
            ),
            {"r1", "r2", "r3", "r5"},
        )


# --- properties ---------------------------------------------------------------

CONDITION_POOL = [
    cond("remote_ip_location_region", "is_in", "DE", "AT"),
    cond("remote_ip_location_region", "is_not_in", "US"),
    cond("remote_ip", "is_in_cidr", "203.0.113.0/24"),
    cond("remote_ip", "is_not_in_cidr", "10.0.0.0/8"),
    cond("auth_provider_id", "is_in", PROVIDER),
    cond("auth_provider_id", "is_not_in", PROVIDER),
    cond("client_verified", "is", "true"),
    cond("client_verified", "is", "false"),
    window("M/08:00-18:00/UTC"),
    window("M/true/Europe/Berlin"),
    window("T/00:00-06:30/America/New_York"),
    window("W/9-17/Asia/Tokyo"),
    window("U/true/UTC"),
]

SUBJECTS = st.builds(
    subject,
    remote_country=st.sampled_from(["DE", "US", "AT", None]),
    remote_ip=st.sampled_from(["203.0.113.9", "10.1.2.3", "198.51.100.1", None]),
    auth_provider_id=st.sampled_from([PROVIDER, OTHER_PROVIDER, None]),
    client_verified=st.booleans(),
    token_expires_at=st.none(),
)
START = datetime(2026, 3, 28, tzinfo=UTC).timestamp()
INSTANTS = st.one_of(
    st.floats(min_value=START, max_value=START + 14 * 24 * HOUR),
    # Monday 2026-03-30 06:00-20:00 UTC, where several windows overlap.
    st.floats(min_value=at(6), max_value=at(20)),
)
CONDITION_LISTS = st.lists(st.sampled_from(CONDITION_POOL), max_size=4)
# Windows that overlap on Monday 2026-03-30, so several policies pass with different expiries.
MONDAY_WINDOWS = [
    window("M/10:00-14:00/UTC"),
    window("M/06:00-23:00/UTC"),
    window("M/true/UTC"),
    window("M/08:00-18:00/UTC"),
]
POLICY_CONDITION_LISTS = st.lists(st.sampled_from(CONDITION_POOL + MONDAY_WINDOWS), max_size=2)


class AuthorizePropertyTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(SUBJECTS, CONDITION_LISTS, INSTANTS, st.one_of(st.none(), st.floats(1, 30 * 86400)))
    def test_single_policy(
        self, s: Subject, conditions: list[Condition], now: float, token_ttl: float | None
    ) -> None:
        """Allowed iff every condition passes; expiry is after now and capped by the token."""
        token = None if token_ttl is None else now + token_ttl
        s = subject(**{**s.__dict__, "token_expires_at": token})
        decision = authorize(s, "r", [Policy("p", ENGINEERS, "r", tuple(conditions))], now)
        results = [evaluate_condition(c, s, now) for c in conditions]
        if all(r.passed for r in results):
            assert isinstance(decision, Allowed)
            expiries = [r.expires_at for r in results if r.expires_at is not None]
            if token is not None:
                expiries.append(token)
            self.assertEqual(decision.expires_at, min(expiries) if expiries else None)
            if decision.expires_at is not None:
                self.assertGreater(decision.expires_at, now)
            if token is not None:
                assert decision.expires_at is not None
                self.assertLessEqual(decision.expires_at, token)
        else:
            assert isinstance(decision, Denied)
            self.assertEqual(decision.reason, "forbidden")
            failed = {c.property for c, r in zip(conditions, results, strict=True) if not r.passed}
            self.assertEqual(decision.violated_properties, tuple(sorted(failed)))

    @settings(max_examples=200, deadline=None)
    @given(SUBJECTS, st.lists(POLICY_CONDITION_LISTS, min_size=1, max_size=4), INSTANTS)
    def test_many_policies(
        self, s: Subject, condition_lists: list[list[Condition]], now: float
    ) -> None:
        """The chosen policy passes and expires no earlier than any other passing one."""
        policies = [
            Policy(f"p{i}", ENGINEERS, "r", tuple(cs)) for i, cs in enumerate(condition_lists)
        ]
        verdicts = {p.id: evaluate_conditions(p.conditions, s, now) for p in policies}
        decision = authorize(s, "r", policies, now)
        passing = {pid: v for pid, v in verdicts.items() if v.passed}
        if passing:
            assert isinstance(decision, Allowed)
            self.assertIn(decision.policy_id, passing)
            chosen = passing[decision.policy_id].expires_at
            for other in passing.values():
                if chosen is not None:
                    self.assertIsNotNone(other.expires_at)
                    assert other.expires_at is not None
                    self.assertGreaterEqual(chosen, other.expires_at)
            self.assertEqual(decision.expires_at, chosen)
            self.assertEqual(
                connectable_resources(
                    s, policies, [Resource("r", "cidr", "10.0.0.0/8", site_id="s")], now
                ),
                {"r"},
            )
        else:
            union = sorted({p for v in verdicts.values() for p in v.violated_properties})
            self.assertEqual(decision, Denied("forbidden", tuple(union)))
            self.assertEqual(
                connectable_resources(
                    s, policies, [Resource("r", "cidr", "10.0.0.0/8", site_id="s")], now
                ),
                set(),
            )
