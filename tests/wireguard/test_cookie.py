"""mac1, mac2 and cookie replies."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from firezone.wireguard.cookie import (
    CookieChecker,
    CookieGenerator,
    cookie_key,
    mac1_key,
    source_bytes,
)
from firezone.wireguard.crypto import (
    LABEL_COOKIE,
    LABEL_MAC1,
    blake2s_hash,
    generate_private_key,
    mac,
    public_key,
)
from firezone.wireguard.messages import CookieReply, sender_index

from .support import load_vectors, seeded

SRC = source_bytes(("192.168.13.37", 2570))

# Message bodies from wireguard-go's cookie_test.go (only their MACs matter here).
MSG_128 = bytes.fromhex(
    "99bba5fc99aa83bd7b00c59a4cb9cf624023f38ed8d062645db28013dacec691"
    "61d630f132b3a2f47b43b5a7e2b1f56c746bb0cd1f94867bc8fb92ed549b44f5"
    "c87db78eff49c4e8397c19e0601951f8e48e02f17f1dcc8eb007fff8af7f6682"
    "83cc7cfa80db8153adf7d80c10e020fde80b3f9015cd93ad0bd50ccc8856e43f"
)
MSG_64 = bytes.fromhex(
    "33e72a849fff576c2dc32de1f55c9756b893c27dd441dd7a4a593b50dd7a7a8c"
    "9b96af553ceb6d0b130b9798b340c3ccb85733456e8b092b812ed2b9660b9305"
)
MSG_32 = MSG_64[32:]


class Fixture:
    def __init__(self) -> None:
        self.pub = public_key(generate_private_key(seeded(3)))
        self.generator = CookieGenerator(self.pub)
        self.checker = CookieChecker(self.pub, seeded(4))


class Mac1Tests(SynchronousTestCase):
    def test_keys(self) -> None:
        """mac1 is keyed by HASH(LABEL_MAC1 || pubkey), cookies by HASH(LABEL_COOKIE || pubkey)."""
        pub = bytes(range(32))
        self.assertEqual(mac1_key(pub), blake2s_hash(b"mac1----" + pub))
        self.assertEqual(cookie_key(pub), blake2s_hash(LABEL_COOKIE, pub))
        self.assertEqual(LABEL_MAC1, b"mac1----")

    def test_mac1_generated_and_checked(self) -> None:
        """mac1 covers everything before it; mac2 stays zero without a cookie."""
        f = Fixture()
        for msg in (MSG_128, MSG_64, MSG_32):
            out = f.generator.add_macs(msg, 0.0)
            self.assertEqual(out[-32:-16], mac(mac1_key(f.pub), msg[:-32]))
            self.assertEqual(out[-16:], bytes(16))
            self.assertTrue(f.checker.check_mac1(out))
            self.assertFalse(f.checker.check_mac2(out, SRC, 0.0))

    def test_tampering_detected(self) -> None:
        """Flipping a bit of the body or of mac1 fails the mac1 check."""
        f = Fixture()
        out = bytearray(f.generator.add_macs(MSG_128, 0.0))
        for pos in (5, len(out) - 20):
            tampered = bytearray(out)
            tampered[pos] ^= 0x20
            self.assertFalse(f.checker.check_mac1(bytes(tampered)))
        other = CookieChecker(public_key(generate_private_key(seeded(9))))
        self.assertFalse(other.check_mac1(bytes(out)))
        self.assertFalse(f.checker.check_mac1(b"short"))


class CookieReplyTests(SynchronousTestCase):
    def exchange(self, f: Fixture, now: float) -> None:
        msg = f.generator.add_macs(MSG_128, now)
        reply = f.checker.create_reply(msg, 1377, SRC, now)
        self.assertEqual(reply.receiver, 1377)
        self.assertTrue(f.generator.consume_reply(CookieReply.decode(reply.encode()), now))

    def test_mac2_after_cookie(self) -> None:
        """After a cookie reply the sender's mac2 verifies for its own source only."""
        f = Fixture()
        self.exchange(f, 0.0)
        for msg in (MSG_64, MSG_128):
            out = f.generator.add_macs(msg, 1.0)
            self.assertTrue(f.checker.check_mac1(out))
            self.assertTrue(f.checker.check_mac2(out, SRC, 1.0))
            tampered = bytearray(out)
            tampered[5] ^= 0x20
            self.assertFalse(f.checker.check_mac2(bytes(tampered), SRC, 1.0))
            self.assertFalse(f.checker.check_mac2(out, source_bytes(("192.168.13.37", 2571)), 1.0))
            self.assertFalse(f.checker.check_mac2(out, source_bytes(("192.168.13.38", 2570)), 1.0))

    def test_reply_bound_to_last_mac1(self) -> None:
        """A cookie reply only opens with the mac1 of the message it answers."""
        f = Fixture()
        first = f.generator.add_macs(MSG_128, 0.0)
        reply = f.checker.create_reply(first, 1, SRC, 0.0)
        f.generator.add_macs(MSG_64, 0.0)  # a newer message: last mac1 changed
        self.assertFalse(f.generator.consume_reply(reply, 0.0))
        self.assertFalse(CookieGenerator(f.pub).consume_reply(reply, 0.0))

    def test_cookie_expires_for_sender(self) -> None:
        """The sender uses a cookie for COOKIE_REFRESH_TIME (120 s), then sends mac2 = 0."""
        f = Fixture()
        self.exchange(f, 0.0)
        self.assertNotEqual(f.generator.add_macs(MSG_64, 120.0)[-16:], bytes(16))
        self.assertEqual(f.generator.add_macs(MSG_64, 120.5)[-16:], bytes(16))

    def test_secret_rotation(self) -> None:
        """The responder's secret lives 120 s; old cookies then stop verifying and a new
        reply rotates the secret."""
        f = Fixture()
        self.exchange(f, 0.0)
        out = f.generator.add_macs(MSG_64, 100.0)
        self.assertTrue(f.checker.check_mac2(out, SRC, 120.0))
        self.assertFalse(f.checker.check_mac2(out, SRC, 120.5))
        self.exchange(f, 121.0)  # new secret, new cookie
        fresh = f.generator.add_macs(MSG_64, 121.0)
        self.assertNotEqual(fresh[-16:], out[-16:])
        self.assertTrue(f.checker.check_mac2(fresh, SRC, 200.0))
        self.assertFalse(f.checker.check_mac2(out, SRC, 122.0))

    def test_source_bytes(self) -> None:
        """Cookies bind to packed IP + little-endian port, IPv4 and IPv6."""
        self.assertEqual(source_bytes(("192.0.2.1", 0x1234)), bytes([192, 0, 2, 1, 0x34, 0x12]))
        self.assertEqual(len(source_bytes(("2001:db8::1", 1))), 18)
        self.assertEqual(source_bytes(("relay-7", 1)), b"relay-7\x01\x00")


class WireguardGoCookieTests(SynchronousTestCase):
    def test_recorded_cookie_exchange(self) -> None:
        """Our cookie reply to wireguard-go is reproducible, and the mac2 wireguard-go
        computed from it verifies (its retried initiation was then answered)."""
        v: dict[str, Any] = load_vectors()
        c = v["cookie"]
        ours = bytes.fromhex(v["our_public_key"])
        chunks = [bytes.fromhex(c["secret"]), bytes.fromhex(c["nonce"])]
        checker = CookieChecker(ours, lambda n: chunks.pop(0))
        first = bytes.fromhex(c["initiation_without_mac2"])
        src = source_bytes((c["source_ip"], c["source_port"]))
        self.assertTrue(checker.check_mac1(first))
        self.assertFalse(checker.check_mac2(first, src, 0.0))
        reply = checker.create_reply(first, sender_index(first), src, 0.0)
        self.assertEqual(reply.encode().hex(), c["cookie_reply"])
        retry = bytes.fromhex(c["initiation_with_mac2"])
        self.assertTrue(checker.check_mac1(retry))
        self.assertTrue(checker.check_mac2(retry, src, 6.0))
        self.assertFalse(checker.check_mac2(retry, source_bytes(("127.0.0.1", 1)), 6.0))
