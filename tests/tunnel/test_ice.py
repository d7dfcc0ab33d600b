"""Unit tests for the sans-IO ICE agent: checks on the wire, timers, credentials, roles."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.credentials import ice_credentials
from firezone.tunnel.ice import (
    CLIENT_DEFAULT,
    CLIENT_IDLE,
    CLIENT_PROFILE,
    SERVER_DEFAULT,
    SERVER_IDLE,
    Connected,
    Failed,
    IceAgent,
    IceCreds,
    IceEvent,
    IceProfile,
    IceState,
    IceTiming,
    PairState,
    RoleChanged,
    credentials_for,
    pair_priority,
)
from firezone.tunnel.turn_client import Address, Transmit
from firezone.wire.candidate import Candidate, CandidateKind, compute_priority
from firezone.wire.stun import (
    Attribute,
    ErrorCode,
    IceControlled,
    IceControlling,
    Message,
    MessageClass,
    Method,
    Priority,
    UseCandidate,
    Username,
    XorMappedAddress,
    verify_fingerprint,
    verify_integrity,
)

CREDS = ice_credentials("client-id", "client-pk", "gateway-id", "gateway-pk")
LOCAL, REMOTE = credentials_for(CREDS, initiator=True)
HERE: Address = ("192.0.2.1", 52625)
THERE: Address = ("192.0.2.2", 52625)
ELSEWHERE: Address = ("198.51.100.9", 61000)
T0 = 1000.0


def agent(controlling: bool = True, *, seed: int = 1, profile: IceProfile = CLIENT_PROFILE,
          remote: bool = True) -> IceAgent:
    a = IceAgent(LOCAL, REMOTE, controlling=controlling, rng=random.Random(seed),
                 profile=profile)
    a.add_local_candidate(Candidate.host(HERE), T0)
    if remote:
        a.add_remote_candidate(Candidate.host(THERE), T0)
    return a


def drain(a: IceAgent) -> list[Transmit]:
    return list(iter(a.poll_transmit, None))


def events(a: IceAgent) -> list[IceEvent]:
    return list(iter(a.poll_event, None))


def request(tid: bytes = b"\x07" * 12, *, username: str | None = None, key: bytes | None = None,
            priority: int | None = 1845501695, role: Attribute | None = None,
            use_candidate: bool = False, fingerprint: bool = True) -> bytes:
    """A check as the remote peer sends it to us: USERNAME ``<our ufrag>:<their ufrag>``."""
    attrs: list[Attribute] = [Username(username or f"{LOCAL.ufrag}:{REMOTE.ufrag}")]
    if priority is not None:
        attrs.append(Priority(priority))
    attrs.append(role if role is not None else IceControlled(1))
    if use_candidate:
        attrs.append(UseCandidate())
    return Message(Method.BINDING, MessageClass.REQUEST, tid, attrs).encode(
        integrity_key=key if key is not None else LOCAL.key, fingerprint=fingerprint)


def answer(check: Transmit, *, key: bytes | None = None, error: int | None = None) -> bytes:
    """The remote peer's response to one of our checks."""
    m = Message.decode(check.payload)
    if error is None:
        reply = Message(Method.BINDING, MessageClass.SUCCESS, m.transaction_id,
                        [XorMappedAddress(*HERE)])
    else:
        reply = Message(Method.BINDING, MessageClass.ERROR, m.transaction_id,
                        [ErrorCode(error, "x")])
    return reply.encode(integrity_key=key if key is not None else REMOTE.key, fingerprint=True)


class TimingTests(SynchronousTestCase):
    def test_rto_doubles_up_to_max(self) -> None:
        """Retransmission waits double from the initial RTO and stop growing at the max RTO."""
        self.assertEqual([CLIENT_DEFAULT.rto(n) for n in range(1, 6)],
                         [0.25, 0.5, 1.0, 1.5, 1.5])
        self.assertEqual([SERVER_DEFAULT.rto(n) for n in (1, 6, 7, 45)], [0.25, 8.0, 15.0, 15.0])
        self.assertEqual(CLIENT_IDLE.rto(1), 25.0)

    def test_profile_timeouts_from_the_schedule(self) -> None:
        """The ICE timeout is str0m's sum(rto(2..N)) + rto(N): 16.5 s, 100 s, 615.5 s,
        1000 s, matching the reference table (≈16.5 s / ≈100 s / ≈615 s / ≈1000 s)."""
        self.assertEqual(CLIENT_DEFAULT.timeout, 0.5 + 1.0 + 9 * 1.5 + 1.5)
        self.assertEqual(CLIENT_DEFAULT.timeout, 16.5)
        self.assertEqual(CLIENT_IDLE.timeout, 100.0)
        self.assertEqual(SERVER_DEFAULT.timeout, 615.5)
        self.assertEqual(SERVER_IDLE.timeout, 1000.0)

    def test_profile_values_from_the_reference(self) -> None:
        """REFERENCE 5.4 IceConfig: RTOs and retransmit counts of the four profiles."""
        self.assertEqual(
            [(t.initial_rto, t.max_rto, t.max_retransmits)
             for t in (CLIENT_DEFAULT, CLIENT_IDLE, SERVER_DEFAULT, SERVER_IDLE)],
            [(0.25, 1.5, 12), (25.0, 25.0, 4), (0.25, 15.0, 45), (25.0, 25.0, 40)])

    def test_pair_priority(self) -> None:
        """RFC 8445 6.1.2.3: "pair priority = 2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0)"."""
        self.assertEqual(pair_priority(True, 10, 7), (7 << 32) + 20 + 1)
        self.assertEqual(pair_priority(False, 10, 7), (7 << 32) + 20 + 0)
        self.assertEqual(pair_priority(True, 5, 5), (5 << 32) + 10)

    def test_credentials_for_each_side(self) -> None:
        """The initiator's local credentials are the receiver's remote ones and vice versa."""
        client = credentials_for(CREDS, initiator=True)
        gateway = credentials_for(CREDS, initiator=False)
        self.assertEqual(client, (gateway[1], gateway[0]))
        self.assertEqual(client[0], IceCreds(CREDS.initiator_username, CREDS.initiator_password))


class ScheduleTests(SynchronousTestCase):
    def _run_unanswered(self, timing: IceTiming) -> tuple[list[float], float]:
        a = agent(profile=IceProfile(timing, timing))
        sent = [T0 for _ in drain(a)]
        failed_at = -1.0
        for _ in range(1000):
            deadline = a.poll_timeout()
            if deadline is None:
                break
            a.handle_timeout(deadline)
            sent += [deadline for _ in drain(a)]
            if any(isinstance(e, Failed) for e in events(a)):
                failed_at = deadline
        return [t - T0 for t in sent], failed_at - T0

    def test_unanswered_checks_follow_each_profile(self) -> None:
        """Each profile sends max_retransmits checks at the doubling RTO schedule, and the
        pair (hence the agent) fails when the first is ``timeout`` old."""
        for timing in (CLIENT_DEFAULT, CLIENT_IDLE, SERVER_DEFAULT, SERVER_IDLE):
            sent, failed = self._run_unanswered(timing)
            self.assertEqual(len(sent), timing.max_retransmits)
            self.assertEqual(sent, timing.send_offsets())
            self.assertAlmostEqual(failed, timing.timeout, places=6)
        sent, failed = self._run_unanswered(CLIENT_DEFAULT)
        self.assertEqual(sent[:5], [0.0, 0.25, 0.75, 1.75, 3.25])
        self.assertEqual(failed, 16.5)

    def test_succeeded_pair_is_kept_fresh(self) -> None:
        """After success the pair is checked every keepalive (consent freshness)."""
        a = agent()
        (check,) = drain(a)
        self.assertTrue(a.handle_input(answer(check), THERE, T0))
        nominate = drain(a)
        self.assertEqual(len(nominate), 1)
        a.handle_input(answer(nominate[0]), THERE, T0)
        self.assertEqual(a.poll_timeout(), T0 + CLIENT_DEFAULT.keepalive)
        a.handle_timeout(T0 + 5)
        (consent,) = drain(a)
        self.assertIsNotNone(Message.decode(consent.payload).get(UseCandidate))


class CheckTests(SynchronousTestCase):
    def test_check_attributes(self) -> None:
        """RFC 8445 7.2.2: USERNAME remote:local, PRIORITY as prflx, ICE-CONTROLLING,
        MESSAGE-INTEGRITY with the remote password, FINGERPRINT."""
        a = agent()
        (check,) = drain(a)
        self.assertEqual((check.dest, check.via_relay), (THERE, None))
        m = Message.decode(check.payload)
        self.assertEqual((m.method, m.message_class), (Method.BINDING, MessageClass.REQUEST))
        self.assertEqual(m.get(Username), Username(f"{REMOTE.ufrag}:{LOCAL.ufrag}"))
        self.assertEqual(m.get(Priority), Priority(compute_priority(CandidateKind.PRFLX)))
        self.assertEqual(m.get(IceControlling), IceControlling(a.tie_breaker))
        self.assertIsNone(m.get(IceControlled))
        self.assertIsNone(m.get(UseCandidate))
        self.assertTrue(verify_integrity(check.payload, REMOTE.pwd.encode()))
        self.assertFalse(verify_integrity(check.payload, LOCAL.pwd.encode()))
        self.assertTrue(verify_fingerprint(check.payload))

    def test_controlled_checks(self) -> None:
        """The controlled side sends ICE-CONTROLLED and never USE-CANDIDATE."""
        a = agent(controlling=False)
        (check,) = drain(a)
        m = Message.decode(check.payload)
        self.assertEqual(m.get(IceControlled), IceControlled(a.tie_breaker))
        self.assertIsNone(m.get(IceControlling))

    def test_nominates_with_use_candidate(self) -> None:
        """The controlling side nominates the succeeded pair with a USE-CANDIDATE check and
        announces Connected when that check succeeds (regular nomination)."""
        a = agent()
        (check,) = drain(a)
        a.handle_input(answer(check), THERE, T0 + 0.01)
        self.assertEqual(events(a), [])
        (nominate,) = drain(a)
        self.assertIsNotNone(Message.decode(nominate.payload).get(UseCandidate))
        a.handle_input(answer(nominate), THERE, T0 + 0.02)
        (connected,) = events(a)
        self.assertIsInstance(connected, Connected)
        assert isinstance(connected, Connected)
        self.assertEqual((connected.dest, connected.via_relay), (THERE, None))
        self.assertEqual(a.state, IceState.CONNECTED)

    def test_answers_a_valid_check(self) -> None:
        """A valid check gets a success response with XOR-MAPPED-ADDRESS, signed with the
        local password (RFC 8445 7.3.1)."""
        a = agent(controlling=False)
        drain(a)
        self.assertTrue(a.handle_input(request(), THERE, T0))
        (response, *_) = drain(a)
        self.assertEqual((response.dest, response.via_relay), (THERE, None))
        m = Message.decode(response.payload)
        self.assertEqual(m.message_class, MessageClass.SUCCESS)
        self.assertEqual(m.transaction_id, b"\x07" * 12)
        self.assertEqual(m.get(XorMappedAddress), XorMappedAddress(*THERE))
        self.assertTrue(verify_integrity(response.payload, LOCAL.pwd.encode()))
        self.assertTrue(verify_fingerprint(response.payload))

    def test_controlled_connects_on_use_candidate(self) -> None:
        """RFC 8445 7.3.1.5: a nominated pair is selected once our own check on it succeeds."""
        a = agent(controlling=False)
        (check,) = drain(a)
        a.handle_input(request(use_candidate=True, role=IceControlling(1)), THERE, T0)
        self.assertEqual(events(a), [])
        a.handle_input(answer(check), THERE, T0 + 0.01)
        self.assertIsInstance(events(a)[0], Connected)

    def test_bad_credentials_are_dropped_and_counted(self) -> None:
        """Wrong USERNAME, MESSAGE-INTEGRITY or FINGERPRINT: no answer, no candidate, no pair."""
        a = agent(remote=False)
        bad = [
            request(username=f"{LOCAL.ufrag}:zzzz"),
            request(key=b"wrong password"),
            request(key=REMOTE.key),
            request(fingerprint=False),
            request(priority=None),
        ]
        for datagram in bad:
            self.assertTrue(a.handle_input(datagram, ELSEWHERE, T0))
        self.assertEqual((a.stats.bad_username, a.stats.bad_integrity,
                          a.stats.bad_fingerprint, a.stats.malformed), (1, 2, 1, 1))
        self.assertEqual(drain(a), [])
        self.assertEqual((a.remote_candidates(), a.pairs()), ([], []))
        self.assertFalse(a.handle_input(request(username=f"other:{REMOTE.ufrag}"), ELSEWHERE, T0),
                         "another agent's check is not ours")
        self.assertFalse(a.handle_input(b"\x80" * 40, ELSEWHERE, T0))

    def test_peer_reflexive_candidate(self) -> None:
        """RFC 8445 7.3.1.3: a valid check from an unknown address creates a prflx remote
        candidate with the PRIORITY of the check, and a triggered check goes back at once."""
        a = agent(controlling=False, remote=False)
        self.assertTrue(a.handle_input(request(priority=1234567), ELSEWHERE, T0))
        (prflx,) = a.remote_candidates()
        self.assertEqual((prflx.kind, prflx.address, prflx.priority),
                         (CandidateKind.PRFLX, ELSEWHERE, 1234567))
        sent = drain(a)
        self.assertEqual([t.dest for t in sent], [ELSEWHERE, ELSEWHERE])
        self.assertEqual(Message.decode(sent[1].payload).message_class, MessageClass.REQUEST)
        self.assertEqual(a.stats.prflx_discovered, 1)
        # Signalled later, the real candidate replaces the peer-reflexive one.
        srflx = Candidate.srflx(ELSEWHERE, ("10.1.1.1", 52625))
        self.assertTrue(a.add_remote_candidate(srflx, T0 + 1))
        self.assertEqual(a.remote_candidates(), [srflx])
        self.assertEqual(a.pairs()[0].remote, srflx)

    def test_check_on_in_progress_pair_triggers_a_new_check(self) -> None:
        """RFC 8445 7.3.1.4: "If the state of that pair is In-Progress, the agent cancels the
        In-Progress transaction ... The agent MUST then create a new connectivity check for
        that pair": the answer comes back at once instead of after the retransmission
        timeout, and a late answer to the first check still counts."""
        a = agent()
        (first,) = drain(a)
        self.assertEqual(a.pairs()[0].state, PairState.IN_PROGRESS)
        self.assertTrue(a.handle_input(request(), THERE, T0 + 0.01))
        sent = drain(a)
        self.assertEqual([Message.decode(t.payload).message_class for t in sent],
                         [MessageClass.SUCCESS, MessageClass.REQUEST])
        self.assertNotEqual(Message.decode(sent[1].payload).transaction_id,
                            Message.decode(first.payload).transaction_id)
        self.assertTrue(a.handle_input(answer(first), THERE, T0 + 0.02))
        self.assertEqual(a.pairs()[0].state, PairState.SUCCEEDED)

    def test_checks_through_an_unknown_relay_are_ignored(self) -> None:
        """A check through a relayed address that is not our candidate gets no answer and
        creates nothing; through our own relayed candidate it is answered via that relay."""
        a = agent(controlling=False, remote=False)
        ours = Candidate.relay(("203.0.113.10", 50000))
        a.add_local_candidate(ours, T0)
        self.assertTrue(a.handle_input(request(), ELSEWHERE, T0, via_relay=("203.0.113.10", 1)))
        self.assertEqual((a.stats.unknown_path, drain(a), a.remote_candidates()), (1, [], []))
        self.assertTrue(a.handle_input(request(), ELSEWHERE, T0, via_relay=ours.address))
        response = drain(a)[0]
        self.assertEqual((response.dest, response.via_relay), (ELSEWHERE, ours.address))

    def test_response_must_come_from_where_the_check_went(self) -> None:
        """RFC 8445 7.2.5.2.1: a response from another address does not validate the pair."""
        a = agent()
        (check,) = drain(a)
        self.assertTrue(a.handle_input(answer(check), ELSEWHERE, T0))
        self.assertTrue(a.handle_input(answer(check), THERE, T0, via_relay=("203.0.113.1", 9)))
        self.assertEqual(a.stats.non_symmetric, 2)
        self.assertEqual(a.pairs()[0].state, PairState.IN_PROGRESS)

    def test_response_needs_the_remote_password(self) -> None:
        """A response signed with anything but the remote password is dropped."""
        a = agent()
        (check,) = drain(a)
        self.assertTrue(a.handle_input(answer(check, key=LOCAL.key), THERE, T0))
        self.assertEqual(a.stats.bad_integrity, 1)
        self.assertEqual(a.pairs()[0].state, PairState.IN_PROGRESS)
        self.assertFalse(a.handle_input(answer(Transmit(request(b"\x09" * 12), THERE)), THERE, T0),
                         "an unknown transaction is not ours")

    def test_error_response_fails_the_pair(self) -> None:
        """A non-487 error response is an unrecoverable failure of the pair."""
        a = agent()
        (check,) = drain(a)
        a.handle_input(answer(check, error=400), THERE, T0)
        self.assertEqual(a.pairs()[0].state, PairState.FAILED)
        self.assertIsInstance(events(a)[-1], Failed)


class RoleConflictTests(SynchronousTestCase):
    def test_controlling_with_larger_tie_breaker_answers_487(self) -> None:
        """RFC 8445 7.3.1.1: controlling, ICE-CONTROLLING in the request and our tie-breaker
        >= theirs -> "respond with a 487 (Role Conflict)" and keep the role."""
        a = agent()
        drain(a)
        a.handle_input(request(role=IceControlling(a.tie_breaker)), THERE, T0)
        (reply,) = drain(a)
        m = Message.decode(reply.payload)
        self.assertEqual((m.message_class, m.get(ErrorCode)),
                         (MessageClass.ERROR, ErrorCode(487, "Role Conflict")))
        self.assertTrue(verify_integrity(reply.payload, LOCAL.key))
        self.assertTrue(a.controlling)

    def test_controlling_with_smaller_tie_breaker_switches(self) -> None:
        """... otherwise "the agent MUST switch to the controlled role" and answer normally."""
        a = agent()
        drain(a)
        a.handle_input(request(role=IceControlling(a.tie_breaker + 1)), THERE, T0)
        self.assertFalse(a.controlling)
        self.assertEqual(events(a), [RoleChanged(False)])
        self.assertEqual(Message.decode(drain(a)[0].payload).message_class, MessageClass.SUCCESS)

    def test_controlled_with_larger_tie_breaker_switches(self) -> None:
        """Controlled, ICE-CONTROLLED in the request and our tie-breaker >= theirs ->
        "the agent MUST switch to the controlling role"."""
        a = agent(controlling=False)
        drain(a)
        a.handle_input(request(role=IceControlled(0)), THERE, T0)
        self.assertTrue(a.controlling)
        self.assertEqual(events(a), [RoleChanged(True)])

    def test_controlled_with_smaller_tie_breaker_answers_487(self) -> None:
        """... otherwise "the agent MUST generate an error response ... 487"."""
        a = agent(controlling=False)
        drain(a)
        a.handle_input(request(role=IceControlled(2**64 - 1)), THERE, T0)
        self.assertEqual(Message.decode(drain(a)[0].payload).get(ErrorCode),
                         ErrorCode(487, "Role Conflict"))
        self.assertFalse(a.controlling)

    def test_487_response_switches_and_rechecks(self) -> None:
        """RFC 8445 7.2.5.1: on 487 to a check with ICE-CONTROLLING switch to controlled and
        check the pair again."""
        a = agent()
        (check,) = drain(a)
        a.handle_input(answer(check, error=487), THERE, T0 + 0.1)
        self.assertFalse(a.controlling)
        self.assertEqual(events(a), [RoleChanged(False)])
        (again,) = drain(a)
        self.assertIsNotNone(Message.decode(again.payload).get(IceControlled))


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=200)
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes_never_raise(self, data: bytes) -> None:
        """Arbitrary datagrams neither raise nor create candidates."""
        a = agent(remote=False)
        a.handle_input(data, ELSEWHERE, T0)
        a.handle_input(data, ELSEWHERE, T0, via_relay=("203.0.113.1", 50000))
        a.handle_timeout(T0 + 1)
        self.assertEqual(a.remote_candidates(), [])

    @settings(max_examples=200)
    @given(st.integers(0, 120), st.binary(min_size=1, max_size=16))
    def test_mutated_checks_never_raise(self, offset: int, junk: bytes) -> None:
        """Corrupted copies of a valid check and of a valid response never raise."""
        a = agent()
        (check,) = drain(a)
        for good in (request(), answer(check)):
            mutated = good[:offset] + junk + good[offset + len(junk):]
            a.handle_input(mutated, THERE, T0)
        a.handle_timeout(T0 + 1)
