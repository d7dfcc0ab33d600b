"""The Phoenix socket the portal serves, without a transport (REFERENCE 1.2)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from firezone.portal.api.connect import ENDPOINTS
from firezone.portal.api.socket import (
    JoinRefused,
    PhoenixSocket,
    Reply,
    error,
    ok,
)


class FakeChannel:
    def __init__(self, socket: PhoenixSocket, join_result: Deferred[None]) -> None:
        self.socket = socket
        self.join_result = join_result
        self.events: list[tuple[str, Any]] = []
        self.joined_payload: Any = "unset"
        self.left = 0

    def join(self, payload: Any) -> Deferred[None]:
        self.joined_payload = payload
        return self.join_result

    def after_join(self) -> None:
        self.socket.push("init", {"hello": True})

    def handle_in(self, event: str, payload: Any) -> Reply | None:
        self.events.append((event, payload))
        if event == "ping":
            return ok({"pong": payload})
        if event == "quiet":
            return None
        if event == "boom":
            raise RuntimeError("bug")
        return error("unknown_message")

    def leave(self) -> None:
        self.left += 1


class PhoenixSocketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = 0
        self.channels: list[FakeChannel] = []
        self.next_join: Deferred[None] | None = None
        self.socket = PhoenixSocket(
            ENDPOINTS["/client/v2/websocket"], self.make, self.sent_text, self.close,
        )

    def make(self, socket: PhoenixSocket) -> FakeChannel:
        d, self.next_join = self.next_join, None
        channel = FakeChannel(socket, d if d is not None else defer.succeed(None))
        self.channels.append(channel)
        return channel

    def sent_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    def close(self) -> None:
        self.closed += 1

    def frame(self, topic: str, event: str, payload: Any = None, ref: Any = 0) -> None:
        self.socket.text_received(
            json.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref}))

    def test_heartbeat_answered(self) -> None:
        """``{"topic":"phoenix","event":"heartbeat","payload":{},"ref":N}`` gets an ok reply."""
        self.frame("phoenix", "heartbeat", {}, 7)
        self.assertEqual(self.sent, [{"topic": "phoenix", "event": "phx_reply",
                                      "payload": {"status": "ok", "response": {}}, "ref": 7}])

    def test_join_reply_then_init(self) -> None:
        """The join is acknowledged with ``{status: ok, response: {}}`` before ``init``."""
        self.frame("client", "phx_join", None, 0)
        self.assertEqual([f["event"] for f in self.sent], ["phx_reply", "init"])
        self.assertEqual(self.sent[0]["payload"], {"status": "ok", "response": {}})
        self.assertIsNone(self.sent[1]["ref"])
        self.assertIsNone(self.channels[0].joined_payload)

    def test_wrong_topic_is_unmatched(self) -> None:
        """Joining another topic, or pushing before joining, is ``unmatched topic``."""
        self.frame("room:lobby", "phx_join", None, 1)
        self.frame("client", "ping", {}, 2)
        self.frame("phoenix", "foo", {}, 3)
        reasons = [f["payload"]["response"]["reason"] for f in self.sent]
        self.assertEqual(reasons, ["unmatched topic"] * 3)
        self.assertEqual([f["ref"] for f in self.sent], [1, 2, 3])

    def test_events_and_replies(self) -> None:
        """Replies carry the request's ref and topic; no reply when the channel gives none."""
        self.frame("client", "phx_join", None, 0)
        self.sent.clear()
        self.frame("client", "ping", {"x": 1}, 5)
        self.frame("client", "quiet", {}, 6)
        self.frame("client", "nope", {}, 7)
        self.assertEqual(self.sent, [
            {"topic": "client", "event": "phx_reply",
             "payload": {"status": "ok", "response": {"pong": {"x": 1}}}, "ref": 5},
            {"topic": "client", "event": "phx_reply",
             "payload": {"status": "error", "response": {"reason": "unknown_message"}},
             "ref": 7},
        ])

    def test_frames_wait_for_a_pending_join(self) -> None:
        """Frames for the topic that arrive during the join are handled after it."""
        self.next_join = Deferred()
        self.frame("client", "phx_join", None, 0)
        self.frame("client", "ping", 1, 1)
        self.assertEqual(self.sent, [])
        self.channels[0].join_result.callback(None)
        self.assertEqual([f["event"] for f in self.sent], ["phx_reply", "init", "phx_reply"])
        self.assertEqual(self.sent[2]["payload"]["response"], {"pong": 1})

    def test_refused_join(self) -> None:
        """A refused join is an error reply; later pushes are ``unmatched topic``."""
        from twisted.internet.defer import fail

        self.next_join = fail(JoinRefused("join crashed"))
        self.frame("client", "phx_join", {}, 0)
        self.frame("client", "ping", 1, 1)
        self.assertEqual(self.sent[0]["payload"],
                         {"status": "error", "response": {"reason": "join crashed"}})
        self.assertEqual(self.sent[1]["payload"]["response"]["reason"], "unmatched topic")
        self.assertEqual(self.channels[0].left, 1)

    def test_leave_and_rejoin(self) -> None:
        """``phx_leave`` is acknowledged and followed by ``phx_close``; a rejoin starts over."""
        self.frame("client", "phx_join", None, 0)
        self.frame("client", "phx_leave", {}, 1)
        self.assertEqual([f["event"] for f in self.sent[-2:]], ["phx_reply", "phx_close"])
        self.assertEqual(self.channels[0].left, 1)
        self.frame("client", "phx_join", None, 2)
        self.frame("client", "phx_join", None, 3)
        self.assertEqual(len(self.channels), 3)
        self.assertEqual(self.channels[1].left, 1)

    def test_crashing_handler_drains_the_socket(self) -> None:
        """An unexpected failure closes the transport so the component reconnects cleanly."""
        self.frame("client", "phx_join", None, 0)
        self.frame("client", "boom", {}, 1)
        self.assertEqual(self.closed, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_connection_lost_leaves_once(self) -> None:
        self.frame("client", "phx_join", None, 0)
        self.socket.connection_lost()
        self.socket.connection_lost()
        self.assertEqual(self.channels[0].left, 1)
        self.socket.push("init", {})
        self.assertEqual(len(self.sent), 2)

    def test_disconnect_push(self) -> None:
        """``disconnect`` ``{reason}`` is pushed, then the transport closes."""
        self.frame("client", "phx_join", None, 0)
        self.socket.disconnect("token_expired")
        self.assertEqual(self.sent[-1], {"topic": "client", "event": "disconnect",
                                         "payload": {"reason": "token_expired"}, "ref": None})
        self.assertEqual(self.closed, 1)

    @settings(max_examples=200)
    @given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
    def test_arbitrary_frames_are_harmless(self, data: bytes | str) -> None:
        """Garbage is dropped without a reply and without closing the socket."""
        before = len(self.sent)
        self.socket.text_received(data)
        self.assertEqual(self.closed, 0)
        self.assertLessEqual(len(self.sent) - before, 1)
