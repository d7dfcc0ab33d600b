"""Tests for firezone.wire.phoenix: Phoenix V1 frames and problem-details bodies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.wire import phoenix
from firezone.wire.phoenix import (
    PhoenixDecodeError,
    PhoenixMessage,
    ProblemDetails,
    Reply,
    is_problem_json,
)

VECTORS = Path("/work/shared/vectors/firezone-messages")


def _vectors(prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(VECTORS.glob(f"{prefix}*.json")):
        out.append((path.name, json.loads(path.read_text())))
    return out


json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12,
)
refs = st.none() | st.integers(0, 2**64) | st.text(max_size=6)


@st.composite
def messages(draw: Any) -> PhoenixMessage:
    absent = draw(st.sets(st.sampled_from(["payload", "ref", "join_ref"])))
    return PhoenixMessage(
        topic=draw(st.text(max_size=12)),
        event=draw(st.text(max_size=12)),
        payload=None if "payload" in absent else draw(json_values),
        ref=None if "ref" in absent else draw(refs),
        join_ref=None if "join_ref" in absent else draw(refs),
        absent=frozenset(absent),
    )


class VectorTests(SynchronousTestCase):
    def test_vectors_present(self) -> None:
        """The shared vectors are where the tests expect them (else every loop is empty)."""
        self.assertEqual(len(_vectors("framing__")), 18)

    def test_every_frame_vector_decodes(self) -> None:
        """Every vector whose message is a whole Phoenix frame decodes, in every direction."""
        frames = [(name, v) for name, v in _vectors() if v["frame"]]
        self.assertGreater(len(frames), 10)
        for name, vector in frames:
            msg = PhoenixMessage.decode(json.dumps(vector["message"]))
            self.assertEqual(msg.topic, vector["message"]["topic"], name)
            self.assertEqual(msg.event, vector["message"]["event"], name)

    def test_frame_vectors_round_trip(self) -> None:
        """encode(decode(x)) has exactly the keys and values of x (absent keys stay absent)."""
        for name, vector in _vectors():
            if not vector["frame"]:
                continue
            encoded = PhoenixMessage.decode(json.dumps(vector["message"])).encode()
            self.assertEqual(json.loads(encoded), vector["message"], name)

    def test_byte_exact_vectors(self) -> None:
        """Frames in connlib's key order (topic, event, payload, ref) encode byte-exactly."""
        exact = 0
        for name, vector in _vectors():
            raw = vector.get("raw")
            if not vector["frame"] or raw is None:
                continue
            keys = list(vector["message"])
            if keys != [k for k in ("topic", "event", "payload", "ref") if k in keys]:
                continue  # e.g. the reply sent by the test server, in its own key order
            self.assertEqual(PhoenixMessage.decode(raw).encode(), raw, name)
            exact += 1
        self.assertGreaterEqual(exact, 3)

    def test_join_and_heartbeat_helpers_match_connlib(self) -> None:
        """The helpers produce connlib's exact join and heartbeat text."""
        join = json.loads((VECTORS / "client-to-portal__phx_join__1.json").read_text())
        self.assertEqual(phoenix.phx_join("test", None, 0).encode(), join["raw"])
        beat = json.loads((VECTORS / "framing__heartbeat__1.json").read_text())
        self.assertEqual(phoenix.heartbeat(1).encode(), beat["raw"])

    def test_reply_vectors(self) -> None:
        """phx_reply vectors parse as replies with the status and reason the tests assert."""
        expected = {
            "framing__phx_reply__1.json": ("error", "unmatched topic", "12"),
            "framing__phx_reply__2.json": ("error", "bad reply", "12"),
            "framing__phx_reply__3.json": ("error", "invalid_version", "12"),
            "framing__phx_reply__4.json": ("error", "disabled", None),
            "framing__phx_reply__5.json": ("ok", None, 9999),
            "framing__phx_reply__6.json": ("error", "not_found", None),
        }
        for name, (status, reason, ref) in expected.items():
            vector = json.loads((VECTORS / name).read_text())
            msg = PhoenixMessage.decode(json.dumps(vector["message"]))
            reply = msg.reply()
            self.assertEqual((reply.status, reply.reason, msg.ref), (status, reason, ref), name)

    def test_close_and_generic_vectors(self) -> None:
        """phx_close has an empty payload; the shout vector keeps its null join_ref."""
        close = PhoenixMessage.decode(json.dumps(
            json.loads((VECTORS / "framing__phx_close__1.json").read_text())["message"]))
        self.assertEqual((close.event, close.payload, close.ref), ("phx_close", {}, None))
        shout = PhoenixMessage.decode(json.dumps(
            json.loads((VECTORS / "framing__shout__1.json").read_text())["message"]))
        self.assertNotIn("join_ref", shout.absent)
        self.assertEqual(shout.payload, {"hello": "world"})

    def test_problem_details_vectors(self) -> None:
        """RFC 9457 bodies parse; the body counts only with a problem+json Content-Type."""
        for name, vector in _vectors("framing__http_problem_details"):
            problem = ProblemDetails.decode(json.dumps(vector["message"]))
            self.assertEqual(problem.to_json(), vector["message"], name)
            announced = is_problem_json(vector["http"]["content_type"])
            self.assertEqual(announced, vector["expect"] == "parses", name)


class FrameTests(SynchronousTestCase):
    @settings(max_examples=200)
    @given(messages())
    def test_round_trip(self, msg: PhoenixMessage) -> None:
        """decode(encode(m)) == m for any frame with JSON values, str or bytes input."""
        text = msg.encode()
        self.assertEqual(PhoenixMessage.decode(text), msg)
        self.assertEqual(PhoenixMessage.decode(text.encode("utf-8")), msg)

    @settings(max_examples=200)
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Arbitrary bytes give a frame or PhoenixDecodeError, never another exception."""
        try:
            PhoenixMessage.decode(data)
        except PhoenixDecodeError:
            pass

    @settings(max_examples=200)
    @given(json_values)
    def test_arbitrary_json(self, value: Any) -> None:
        """Any JSON value that is not a frame raises PhoenixDecodeError."""
        try:
            msg = PhoenixMessage.decode(json.dumps(value))
        except PhoenixDecodeError:
            return
        self.assertIsInstance(value, dict)
        self.assertEqual(msg.topic, value["topic"])

    def test_rejects_malformed(self) -> None:
        """Wrong types, missing keys, non-JSON and non-UTF-8 input raise PhoenixDecodeError."""
        bad: list[str | bytes] = [
            "",
            "{",
            "[]",
            "null",
            '{"event":"x","payload":{},"ref":1}',
            '{"topic":"t","payload":{},"ref":1}',
            '{"topic":1,"event":"x"}',
            '{"topic":"t","event":null}',
            '{"topic":"t","event":"x","ref":true}',
            '{"topic":"t","event":"x","ref":1.5}',
            '{"topic":"t","event":"x","ref":-1}',
            '{"topic":"t","event":"x","ref":[1]}',
            '{"topic":"t","event":"x","join_ref":{}}',
            '{"topic":"t","event":"x","payload":NaN}',
            '{"topic":"t","event":"x","payload":Infinity}',
            b'{"topic":"\xff","event":"x"}',
            "[" * 100_000 + "]" * 100_000,
        ]
        for text in bad:
            with self.assertRaises(PhoenixDecodeError, msg=repr(text)[:60]):
                PhoenixMessage.decode(text)

    def test_size_limit(self) -> None:
        """Frames over the limit are refused before parsing; the limit counts UTF-8 bytes."""
        frame = phoenix.push("t", "e", "x" * 100).encode()
        PhoenixMessage.decode(frame, max_size=len(frame))
        with self.assertRaises(PhoenixDecodeError):
            PhoenixMessage.decode(frame, max_size=len(frame) - 1)
        wide = phoenix.push("t", "e", "\u00e9" * 10).encode()  # 2 bytes per character
        with self.assertRaises(PhoenixDecodeError):
            PhoenixMessage.decode(wide, max_size=len(wide))
        with self.assertRaises(PhoenixDecodeError):
            PhoenixMessage.decode(b" " * (phoenix.MAX_FRAME_BYTES + 1))

    def test_string_refs_accepted(self) -> None:
        """A string ref from a Phoenix JS client decodes and is echoed unchanged."""
        msg = PhoenixMessage.decode('{"topic":"t","event":"e","payload":{},"ref":"7"}')
        self.assertEqual(msg.ref, "7")
        self.assertIn('"ref":"7"', phoenix.phx_reply("t", msg.ref, "ok").encode())

    def test_invalid_values_refused_at_construction(self) -> None:
        """A message can't claim an absent key that has a value, or carry a bad ref."""
        with self.assertRaises(ValueError):
            PhoenixMessage("t", "e", {"a": 1}, absent=frozenset({"payload"}))
        with self.assertRaises(ValueError):
            PhoenixMessage("t", "e", ref=-3)
        with self.assertRaises(ValueError):
            PhoenixMessage("t", "e", absent=frozenset({"topic"}))

    def test_helpers(self) -> None:
        """Each helper builds the frame REFERENCE 1.2 shows."""
        self.assertEqual(
            json.loads(phoenix.phx_join("relay", {"stamp_secret": "ab"}, 0).encode()),
            {"topic": "relay", "event": "phx_join", "payload": {"stamp_secret": "ab"}, "ref": 0},
        )
        self.assertEqual(
            json.loads(phoenix.phx_reply("client", 3, "ok").encode()),
            {"topic": "client", "event": "phx_reply",
             "payload": {"status": "ok", "response": {}}, "ref": 3},
        )
        self.assertEqual(
            json.loads(phoenix.phx_reply("client", 4, "error", {"reason": "x"}).encode())
            ["payload"],
            {"status": "error", "response": {"reason": "x"}},
        )
        self.assertEqual(json.loads(phoenix.phx_close("client").encode()),
                         {"topic": "client", "event": "phx_close", "payload": {}, "ref": None})
        self.assertEqual(phoenix.phx_error("gateway").event, "phx_error")
        self.assertEqual(json.loads(phoenix.disconnect("client", "token_expired").encode()),
                         {"topic": "client", "event": "disconnect",
                          "payload": {"reason": "token_expired"}, "ref": None})

    def test_reply_parsing_is_strict(self) -> None:
        """A reply needs status ok/error and an object response; other events aren't replies."""
        payloads: list[Any] = [None, [], {"status": "ok"}, {"status": "maybe", "response": {}},
                               {"status": "ok", "response": []}]
        for payload in payloads:
            with self.assertRaises(PhoenixDecodeError, msg=repr(payload)):
                Reply.from_payload(payload)
        with self.assertRaises(PhoenixDecodeError):
            phoenix.heartbeat(1).reply()
        self.assertTrue(Reply.from_payload({"status": "ok", "response": {}}).ok)


class ProblemDetailsTests(SynchronousTestCase):
    def test_portal_shape(self) -> None:
        """for_status fills type about:blank and the status phrase, as problem_details.ex."""
        vector = json.loads((VECTORS / "framing__http_problem_details__1.json").read_text())
        built = ProblemDetails.for_status(401, "invalid_token", "Invalid token")
        self.assertEqual(built.to_json(), vector["message"])
        self.assertEqual(ProblemDetails.decode(built.encode()), built)

    def test_content_type_matching(self) -> None:
        """Media type compared case-insensitively with parameters ignored (connlib)."""
        self.assertTrue(is_problem_json("Application/Problem+JSON; charset=utf-8"))
        self.assertTrue(is_problem_json(" application/problem+json "))
        self.assertFalse(is_problem_json("application/json"))
        self.assertFalse(is_problem_json("text/html"))
        self.assertFalse(is_problem_json(None))

    def test_rejects_malformed(self) -> None:
        """Non-objects, wrong member types and bad statuses raise PhoenixDecodeError."""
        for body in (b"{not json", b"[]", b'{"code":1}', b'{"status":"401"}',
                     b'{"status":true}', b'{"status":99}', b"\xff"):
            with self.assertRaises(PhoenixDecodeError, msg=repr(body)):
                ProblemDetails.decode(body)

    def test_extension_members_ignored(self) -> None:
        """RFC 9457 3.2: 'problem type definitions MAY extend' the object; unknown members skip."""
        problem = ProblemDetails.decode(b'{"status":503,"code":"rate_limit","retry":5}')
        self.assertEqual((problem.status, problem.code), (503, "rate_limit"))

    @settings(max_examples=200)
    @given(st.binary(max_size=100))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Arbitrary bytes give a value or PhoenixDecodeError, nothing else."""
        try:
            ProblemDetails.decode(data)
        except PhoenixDecodeError:
            pass
