"""Tests for firezone.control.channel: the portal channel state machine, timers on task.Clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from firezone.control.backoff import BackoffPolicy
from firezone.control.channel import (
    AUTHENTICATION_FAILED,
    INVALID_TOKEN,
    LOGIN_FAILED,
    MAX_RETRIES_REACHED,
    ChannelState,
    CloseConnection,
    ConnectFailure,
    Disconnected,
    Effect,
    Fatal,
    Joined,
    MessageReceived,
    Notice,
    OpenConnection,
    PhoenixChannel,
    SendFrame,
)
from firezone.wire import phoenix

TOPIC = "relay"
JOIN_PAYLOAD = {"stamp_secret": "ab" * 32}


def constant(value: float) -> Callable[[], float]:
    return lambda: value


HALF = constant(0.5)


class Harness:
    """Drives a PhoenixChannel the way the adapter does: one Clock timer at next_deadline."""

    def __init__(self, rng: Callable[[], float] = HALF, **kwargs: Any) -> None:
        self.clock = Clock()
        self.machine = PhoenixChannel(TOPIC, JOIN_PAYLOAD, rng=rng, **kwargs)
        self.effects: list[Effect] = []
        self.opened_at: list[float] = []
        self._call: IDelayedCall | None = None

    # plumbing

    def now(self) -> float:
        return self.clock.seconds()

    def run(self) -> None:
        new = self.machine.take_effects()
        for effect in new:
            if isinstance(effect, OpenConnection):
                self.opened_at.append(self.now())
        self.effects += new
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        deadline = self.machine.next_deadline()
        if deadline is not None:
            self._call = self.clock.callLater(max(0.0, deadline - self.now()), self._fire)

    def _fire(self) -> None:
        self._call = None
        self.machine.timer_fired(self.now())
        self.run()

    def advance(self, seconds: float) -> None:
        """Move time forward, stopping at every due call so each sees its own ``now``."""
        target = self.clock.seconds() + seconds
        while True:
            due = [c.getTime() for c in self.clock.getDelayedCalls() if c.getTime() <= target]
            if not due:
                break
            self.clock.advance(max(0.0, min(due) - self.clock.seconds()))
        self.clock.advance(max(0.0, target - self.clock.seconds()))

    def take(self) -> list[Effect]:
        effects, self.effects = self.effects, []
        return effects

    # inputs

    def start(self) -> None:
        self.machine.start(self.now())
        self.run()

    def connect(self) -> None:
        self.machine.connected(self.machine.attempt, self.now())
        self.run()

    def fail(self, failure: ConnectFailure | None = None, attempt: int | None = None) -> None:
        self.machine.connection_failed(
            self.machine.attempt if attempt is None else attempt,
            failure or ConnectFailure("connection refused"),
            self.now(),
        )
        self.run()

    def receive(self, msg: phoenix.PhoenixMessage | str) -> None:
        text = msg if isinstance(msg, str) else msg.encode()
        self.machine.text_received(self.machine.attempt, text, self.now())
        self.run()

    def reply(self, ref: int, status: str = "ok", response: dict[str, Any] | None = None,
              topic: str = TOPIC) -> None:
        self.receive(phoenix.phx_reply(topic, ref, status, response))

    def send(self, event: str, payload: Any) -> bool:
        accepted = self.machine.send(event, payload, self.now())
        self.run()
        return accepted

    def joined(self) -> None:
        """Start, connect and have the join accepted."""
        self.start()
        self.connect()
        self.reply(0)

    # views

    def frames(self, effects: list[Effect] | None = None) -> list[phoenix.PhoenixMessage]:
        source = self.effects if effects is None else effects
        return [phoenix.PhoenixMessage.decode(e.text) for e in source if isinstance(e, SendFrame)]

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.effects if isinstance(e, kind)]


class JoinTests(SynchronousTestCase):
    def test_join_is_first_frame_with_ref_zero(self) -> None:
        """After the upgrade the join goes out first, ref 0, with the role's payload."""
        h = Harness()
        h.start()
        self.assertEqual([type(e) for e in h.take()], [OpenConnection])
        h.connect()
        [join] = h.frames()
        self.assertEqual((join.topic, join.event, join.payload, join.ref),
                         (TOPIC, "phx_join", JOIN_PAYLOAD, 0))
        self.assertIs(h.machine.state, ChannelState.JOINING)

    def test_ok_reply_joins(self) -> None:
        """An ok reply to the join's ref reports Joined with the response."""
        h = Harness()
        h.start()
        h.connect()
        h.reply(0, response={"hello": 1})
        self.assertEqual(h.of(Joined), [Joined({"hello": 1})])
        self.assertTrue(h.machine.joined)

    def test_reply_to_other_ref_does_not_join(self) -> None:
        """A reply whose ref is not the join's (e.g. 9999) is ignored."""
        h = Harness()
        h.start()
        h.connect()
        h.reply(9999)
        self.assertEqual(h.of(Joined), [])
        self.assertIs(h.machine.state, ChannelState.JOINING)

    def test_join_timeout(self) -> None:
        """A join unanswered for 5 s drops the connection and retries (connlib RoomJoinTimedOut)."""
        h = Harness()
        h.start()
        h.connect()
        h.take()
        h.advance(4.9)
        self.assertEqual(h.take(), [])
        h.advance(0.1)
        effects = h.take()
        self.assertEqual(effects[0], CloseConnection(1, graceful=False))
        lost = effects[1]
        assert isinstance(lost, Disconnected)
        self.assertIn("timed out", lost.reason)

    def test_join_error_is_fatal(self) -> None:
        """An error reply to the pending join is fatal (connlib Error::LoginFailed)."""
        h = Harness()
        h.start()
        h.connect()
        h.reply(0, "error", {"reason": "invalid_version"})
        [fatal] = h.of(Fatal)
        self.assertEqual(fatal.error.kind, LOGIN_FAILED)
        self.assertIn("invalid_version", fatal.error.message)
        self.assertIn(CloseConnection(1, graceful=True), h.effects)
        h.take()
        h.advance(3600)
        self.assertEqual(h.take(), [])

    def test_connect_timeout(self) -> None:
        """TCP+TLS+upgrade get 15 s together; then the dial is abandoned and retried."""
        h = Harness()
        h.start()
        h.take()
        h.advance(14.9)
        self.assertEqual(h.take(), [])
        h.advance(0.1)
        effects = h.take()
        self.assertEqual(effects[0], CloseConnection(1, graceful=False))
        self.assertIsInstance(effects[1], Disconnected)


class HeartbeatTests(SynchronousTestCase):
    def test_cadence(self) -> None:
        """Heartbeats go to topic phoenix every 10 s with the shared ref counter."""
        h = Harness()
        h.joined()
        h.take()
        times = []
        for _ in range(5):
            h.advance(10)
            [beat] = h.frames(h.take())
            self.assertEqual((beat.topic, beat.event, beat.payload), ("phoenix", "heartbeat", {}))
            times.append((h.now(), beat.ref))
            assert isinstance(beat.ref, int)
            h.reply(beat.ref, topic="phoenix")
        self.assertEqual(times, [(10.0, 1), (20.0, 2), (30.0, 3), (40.0, 4), (50.0, 5)])
        self.assertTrue(h.machine.joined)

    def test_no_heartbeat_before_interval(self) -> None:
        """Nothing is sent between heartbeats."""
        h = Harness()
        h.joined()
        h.take()
        h.advance(9.99)
        self.assertEqual(h.take(), [])

    def test_more_than_three_unanswered_reconnects(self) -> None:
        """'> 3 unanswered heartbeats' reconnect: the 4th unanswered one (t=40) drops the link."""
        h = Harness()
        h.joined()
        h.take()
        h.advance(39.9)
        self.assertEqual(len(h.frames(h.take())), 3)
        self.assertTrue(h.machine.joined)
        h.advance(0.1)
        effects = h.take()
        self.assertIn(CloseConnection(1, graceful=False), effects)
        [lost] = [e for e in effects if isinstance(e, Disconnected)]
        self.assertIn("unanswered", lost.reason)

    def test_reply_with_unknown_ref_does_not_count(self) -> None:
        """A heartbeat reply with a non-matching ref (vector phx_reply__5: 9999) doesn't count."""
        h = Harness()
        h.joined()
        for _ in range(3):
            h.advance(10)
            h.reply(9999, topic="phoenix")
        h.take()
        h.advance(10)
        self.assertTrue(h.of(Disconnected))

    def test_answered_heartbeats_keep_the_link(self) -> None:
        """Answering each heartbeat keeps the connection for a long time."""
        h = Harness()
        h.joined()
        for _ in range(30):
            h.advance(10)
            for beat in h.frames(h.take()):
                assert isinstance(beat.ref, int)
                h.reply(beat.ref, topic="phoenix")
        self.assertEqual(h.of(Disconnected), [])
        self.assertEqual(h.machine.attempt, 1)

    def test_push_postpones_heartbeat(self) -> None:
        """connlib resets its heartbeat interval on every request sent: a push at 5 s moves it."""
        h = Harness()
        h.joined()
        h.advance(5)
        h.send("foo", {})
        h.take()
        h.advance(9.9)
        self.assertEqual(h.take(), [])
        h.advance(0.1)
        [beat] = h.frames(h.take())
        self.assertEqual(beat.event, "heartbeat")


class BackoffTests(SynchronousTestCase):
    def test_initial_connect_backoff(self) -> None:
        """Before the first connect: retry every 1 s; give up (fatal) after 15 s."""
        h = Harness()
        h.start()
        for _ in range(40):
            if h.machine.state is not ChannelState.CONNECTING:
                break
            h.fail()
            h.advance(1)
        self.assertEqual(h.opened_at, [float(t) for t in range(16)])
        [fatal] = h.of(Fatal)
        self.assertEqual(fatal.error.kind, MAX_RETRIES_REACHED)
        self.assertIn("connection refused", fatal.error.message)
        delays = [e.retry_in for e in h.of(Disconnected)]
        self.assertEqual(delays, [1.0] * 15)

    def test_reconnect_backoff_grows_with_jitter(self) -> None:
        """After a connect, delays follow 0.5 s * 1.5^n (max 60 s), each within +-50 % jitter."""
        draws = iter([0.0, 0.999999, 0.25] * 20)
        h = Harness(rng=lambda: next(draws))
        h.joined()
        for _ in range(15):
            h.fail()
            delay = h.of(Disconnected)[-1].retry_in
            opened = len(h.opened_at)
            h.advance(delay - 0.001)
            self.assertEqual(len(h.opened_at), opened, "reconnected before the delay")
            h.advance(0.002)
            self.assertEqual(len(h.opened_at), opened + 1, "did not reconnect after the delay")
        delays = [e.retry_in for e in h.of(Disconnected)]
        interval = 0.5
        for n, delay in enumerate(delays):
            self.assertGreaterEqual(delay, interval * 0.5 - 1e-9, n)
            self.assertLessEqual(delay, interval * 1.5 + 1e-9, n)
            interval = min(interval * 1.5, 60.0)
        self.assertAlmostEqual(delays[0], 0.25)
        self.assertAlmostEqual(delays[1], 0.75 * 1.5, places=4)
        self.assertAlmostEqual(delays[-3], 30.0)  # 60 s * (1 - 0.5) once capped

    def test_successful_connect_resets_backoff(self) -> None:
        """A successful upgrade starts the next failure run from the initial interval again."""
        h = Harness(rng=constant(0.5))
        h.joined()
        for _ in range(4):
            h.fail()
            h.advance(h.of(Disconnected)[-1].retry_in)
        h.connect()
        h.fail()
        self.assertEqual(h.of(Disconnected)[-1].retry_in, 0.5)

    def test_reconnect_budget(self) -> None:
        """The role's max elapsed time ends reconnecting with MAX_RETRIES_REACHED."""
        h = Harness(reconnect_backoff=BackoffPolicy(max_elapsed=120.0))
        h.joined()
        for _ in range(100):
            if h.machine.state is ChannelState.FATAL:
                break
            h.fail()
            if h.machine.state is ChannelState.FATAL:
                break
            h.advance(h.of(Disconnected)[-1].retry_in)
        [fatal] = h.of(Fatal)
        self.assertEqual(fatal.error.kind, MAX_RETRIES_REACHED)
        self.assertLessEqual(h.now(), 120.0)
        self.assertGreater(h.now(), 60.0)

    def test_retry_after_is_honoured(self) -> None:
        """A 503 with Retry-After waits exactly that long and does not consume the backoff."""
        h = Harness()
        h.joined()
        h.fail(ConnectFailure("rate limited", status=503, retry_after=30.0, code="rate_limit"))
        self.assertEqual(h.of(Disconnected)[-1].retry_in, 30.0)
        h.advance(29.999)
        self.assertEqual(len(h.opened_at), 1)
        h.advance(0.001)
        self.assertEqual(len(h.opened_at), 2)
        h.fail()
        self.assertEqual(h.of(Disconnected)[-1].retry_in, 0.5)  # first step of the schedule

    def test_retry_after_before_first_connect(self) -> None:
        """Retry-After also overrides the 1 s initial-connect interval."""
        h = Harness()
        h.start()
        h.fail(ConnectFailure("busy", status=503, retry_after=7.0))
        h.advance(6.9)
        self.assertEqual(len(h.opened_at), 1)
        h.advance(0.1)
        self.assertEqual(len(h.opened_at), 2)


class RejectionTests(SynchronousTestCase):
    def test_401_token_codes_are_fatal(self) -> None:
        """401 with code invalid_token/missing_token is fatal: the token is to blame."""
        for code in ("invalid_token", "missing_token"):
            h = Harness()
            h.start()
            h.fail(ConnectFailure("401", status=401, code=code, detail="Invalid token"))
            [fatal] = h.of(Fatal)
            self.assertEqual(fatal.error.kind, INVALID_TOKEN)
            self.assertIn(code, fatal.error.message)
            h.take()
            h.advance(3600)
            self.assertEqual(h.take(), [])
            self.assertEqual(len(h.opened_at), 1)

    def test_401_without_code_is_fatal_too(self) -> None:
        """Any other 401 is AuthenticationFailed, also fatal in connlib."""
        h = Harness()
        h.start()
        h.fail(ConnectFailure("401", status=401))
        [fatal] = h.of(Fatal)
        self.assertEqual(fatal.error.kind, AUTHENTICATION_FAILED)

    def test_other_statuses_are_retried(self) -> None:
        """400/402/403/409/429/5xx and TCP errors are hiccups (http_400_returns_client_error)."""
        failures = [ConnectFailure("tcp", None)] + [
            ConnectFailure(str(s), status=s) for s in (400, 402, 403, 409, 429, 500, 502, 503)
        ]
        for failure in failures:
            h = Harness()
            h.start()
            h.fail(failure)
            self.assertEqual(h.of(Fatal), [], failure)
            self.assertEqual(len(h.of(Disconnected)), 1, failure)
            h.advance(1)
            self.assertEqual(len(h.opened_at), 2, failure)

    def test_stale_events_are_ignored(self) -> None:
        """Events from an abandoned attempt change nothing."""
        h = Harness()
        h.start()
        h.fail()
        h.advance(1)
        h.take()
        h.fail(ConnectFailure("old", status=401), attempt=1)
        h.machine.connected(1, h.now())
        h.run()
        self.assertEqual(h.take(), [])
        self.assertIs(h.machine.state, ChannelState.CONNECTING)


class QueueTests(SynchronousTestCase):
    def test_no_pipelining_before_join_reply(self) -> None:
        """Pushes wait until the join is answered, then go out in order after it (ref 1, 2, ...)."""
        h = Harness()
        h.start()
        self.assertTrue(h.send("bar", None))
        h.connect()
        self.assertTrue(h.send("baz", {"n": 1}))
        self.assertEqual([f.event for f in h.frames()], ["phx_join"])
        h.reply(0)
        frames = h.frames()
        self.assertEqual([(f.event, f.ref) for f in frames],
                         [("phx_join", 0), ("bar", 1), ("baz", 2)])
        self.assertEqual(frames[2].payload, {"n": 1})
        self.assertEqual(h.machine.queued, 0)

    def test_queue_bound(self) -> None:
        """At most 32 pushes wait (MAX_BUFFERED_MESSAGES); the 33rd is refused."""
        h = Harness()
        for n in range(32):
            self.assertTrue(h.send("m", n))
        self.assertFalse(h.send("m", 32))
        self.assertEqual(h.machine.queued, 32)
        self.assertTrue(h.of(Notice))
        h.joined()
        self.assertEqual([f.payload for f in h.frames() if f.event == "m"], list(range(32)))

    def test_exact_duplicates_dropped(self) -> None:
        """An exact duplicate of a queued push is dropped (#11440); a different one is kept."""
        h = Harness()
        h.send("ice", {"a": 1, "b": [1, 2]})
        h.send("ice", {"b": [1, 2], "a": 1})  # same JSON object, other key order
        h.send("ice", {"a": 2, "b": [1, 2]})
        h.send("other", {"a": 1, "b": [1, 2]})
        self.assertEqual(h.machine.queued, 3)
        h.joined()
        self.assertEqual(len([f for f in h.frames() if f.event != "phx_join"]), 3)

    def test_duplicates_sent_when_joined(self) -> None:
        """Once joined nothing is queued, so sending twice sends twice."""
        h = Harness()
        h.joined()
        h.take()
        h.send("x", 1)
        h.send("x", 1)
        self.assertEqual(len(h.frames()), 2)

    def test_queue_survives_reconnect(self) -> None:
        """Pushes queued while disconnected are sent on the next successful join."""
        h = Harness()
        h.joined()
        h.fail()
        h.send("late", 1)
        h.advance(h.of(Disconnected)[-1].retry_in)
        h.take()
        h.connect()
        h.reply(0)
        self.assertEqual([(f.event, f.ref) for f in h.frames()],
                         [("phx_join", 0), ("late", 1)])

    def test_non_json_payload_is_a_caller_bug(self) -> None:
        """A payload that can't be JSON raises at send() rather than at some later flush."""
        h = Harness()
        with self.assertRaises(TypeError):
            h.send("x", object())
        with self.assertRaises(ValueError):
            h.send("x", float("nan"))


class RefTests(SynchronousTestCase):
    def test_refs_restart_per_connection(self) -> None:
        """'ref is a strictly increasing integer starting at 0 per connection.'"""
        h = Harness()
        h.joined()
        h.send("a", 1)
        h.advance(10)
        first = [f.ref for f in h.frames(h.take())]
        self.assertEqual(first, [0, 1, 2])
        h.fail()
        h.advance(h.of(Disconnected)[-1].retry_in)
        h.connect()
        self.assertEqual([f.ref for f in h.frames()], [0])

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.sampled_from(["tick", "send", "answer", "drop", "reconnect", "push"]),
                    max_size=40))
    def test_refs_strictly_increase(self, ops: list[str]) -> None:
        """Whatever happens, the refs written on one connection are 0, 1, 2, ... in order."""
        h = Harness()
        h.joined()
        sent: dict[int, list[Any]] = {}
        for op in ops:
            if op == "tick":
                h.advance(5)
            elif op == "send":
                h.send("e", len(sent))
            elif op == "answer":
                for frame in h.frames():
                    if frame.event in ("heartbeat", "phx_join") and isinstance(frame.ref, int):
                        h.reply(frame.ref, topic=frame.topic)
            elif op == "drop":
                h.fail()
            elif op == "reconnect" and h.machine.state is ChannelState.WAITING:
                h.advance(h.machine.next_deadline() - h.now())  # type: ignore[operator]
                h.connect()
            elif op == "push":
                h.receive(phoenix.push(TOPIC, "init", {}))
            for effect in h.take():
                if isinstance(effect, SendFrame):
                    sent.setdefault(effect.attempt, []).append(
                        json.loads(effect.text)["ref"])
        for attempt, attempt_refs in sent.items():
            self.assertEqual(attempt_refs, list(range(len(attempt_refs))), attempt)


class InboundTests(SynchronousTestCase):
    def test_server_push_delivered(self) -> None:
        """A push on the joined topic (ref null) reaches the observer with its payload."""
        h = Harness()
        h.joined()
        h.receive(phoenix.push(TOPIC, "init", {"relays": []}))
        self.assertEqual(h.of(MessageReceived), [MessageReceived("init", {"relays": []})])

    def test_other_topic_ignored(self) -> None:
        """A push on a topic we did not join is logged, not delivered."""
        h = Harness()
        h.joined()
        h.receive(phoenix.push("room:lobby", "shout", {"hello": "world"}))
        self.assertEqual(h.of(MessageReceived), [])
        self.assertTrue(h.of(Notice))

    def test_unmatched_topic_rejoins(self) -> None:
        """An 'unmatched topic' error reply to a push makes the channel join again."""
        h = Harness()
        h.joined()
        h.send("foo", {})
        h.take()
        h.reply(1, "error", {"reason": "unmatched topic"})
        [join] = h.frames(h.take())
        self.assertEqual((join.event, join.ref, join.payload), ("phx_join", 2, JOIN_PAYLOAD))
        self.assertIs(h.machine.state, ChannelState.JOINING)
        h.send("held", 1)
        self.assertEqual(h.frames(), [])  # queued until the re-join is answered
        h.reply(2)
        self.assertEqual(len(h.of(Joined)), 1)
        self.assertEqual([(f.event, f.ref) for f in h.frames()], [("held", 3)])
        self.assertEqual(h.machine.attempt, 1)  # same connection

    def test_other_error_reply_logged(self) -> None:
        """Other error replies to pushes (unknown_message) are only logged."""
        h = Harness()
        h.joined()
        h.send("foo", {})
        h.take()
        h.reply(1, "error", {"reason": "unknown_message"})
        [notice] = h.of(Notice)
        self.assertIn("unknown_message", notice.text)
        self.assertIn("foo", notice.text)
        self.assertTrue(h.machine.joined)

    def test_token_expired_is_fatal(self) -> None:
        """disconnect {reason: token_expired} is fatal (connlib Error::InvalidToken)."""
        h = Harness()
        h.joined()
        h.receive(phoenix.disconnect(TOPIC, "token_expired"))
        [fatal] = h.of(Fatal)
        self.assertEqual(fatal.error.kind, INVALID_TOKEN)
        self.assertIn(CloseConnection(1, graceful=True), h.effects)
        self.assertFalse(h.send("x", 1))

    def test_other_disconnect_reason_delivered(self) -> None:
        """A disconnect reason connlib does not model (certificate_revoked) is handed on."""
        h = Harness()
        h.joined()
        h.receive(phoenix.disconnect(TOPIC, "certificate_revoked"))
        self.assertEqual(h.of(Fatal), [])
        self.assertEqual(h.of(MessageReceived),
                         [MessageReceived("disconnect", {"reason": "certificate_revoked"})])

    def test_phx_close_reconnects(self) -> None:
        """phx_close drops the connection and reconnects (connlib CloseMessage hiccup)."""
        h = Harness()
        h.joined()
        h.receive(phoenix.phx_close(TOPIC))
        self.assertIn(CloseConnection(1, graceful=False), h.effects)
        h.advance(h.of(Disconnected)[-1].retry_in)
        self.assertEqual(h.machine.attempt, 2)

    def test_phx_error_ignored(self) -> None:
        """phx_error is only logged; the portal drains the socket itself if it must."""
        h = Harness()
        h.joined()
        h.take()
        h.receive(phoenix.phx_error(TOPIC))
        self.assertEqual([type(e) for e in h.take()], [Notice])
        self.assertTrue(h.machine.joined)

    def test_malformed_frames_ignored(self) -> None:
        """Bad frames and bad replies are logged and skipped; the connection stays."""
        h = Harness()
        h.joined()
        h.take()
        h.receive("{not json")
        h.receive('{"topic":"relay","event":"phx_reply","payload":{"status":"ok"},"ref":0}')
        h.receive(phoenix.phx_reply(TOPIC, None, "ok"))
        self.assertEqual([type(e) for e in h.take()], [Notice, Notice, Notice])
        self.assertTrue(h.machine.joined)


class LifecycleTests(SynchronousTestCase):
    def test_stop(self) -> None:
        """stop() closes gracefully, cancels every timer and refuses further pushes."""
        h = Harness()
        h.joined()
        h.send("x", 1)
        h.take()
        h.machine.stop()
        h.run()
        self.assertEqual(h.take(), [CloseConnection(1, graceful=True)])
        self.assertIsNone(h.machine.next_deadline())
        self.assertFalse(h.send("y", 2))
        h.advance(3600)
        self.assertEqual(h.take(), [])

    def test_stop_then_start(self) -> None:
        """A stopped channel dials again when started again."""
        h = Harness()
        h.joined()
        h.machine.stop()
        h.start()
        self.assertEqual(h.machine.state, ChannelState.CONNECTING)
        self.assertEqual(h.machine.attempt, 2)

    def test_lost_while_joined_uses_reconnect_schedule(self) -> None:
        """A dropped established connection reports Disconnected and redials after the backoff."""
        h = Harness(rng=constant(0.0))
        h.joined()
        h.take()
        h.fail(ConnectFailure("connection to the portal lost"))
        effects = h.take()
        self.assertEqual(effects, [CloseConnection(1, graceful=False),
                                   Disconnected("connection to the portal lost", 0.25)])
        h.advance(0.25)
        self.assertEqual(h.take(), [OpenConnection(2)])

