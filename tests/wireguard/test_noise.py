"""The Noise_IKpsk2 handshake, between our own peers and against recorded wireguard-go traffic."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from twisted.trial.unittest import SynchronousTestCase

from firezone.wireguard.cookie import CookieGenerator
from firezone.wireguard.crypto import generate_private_key, public_key, tai64n
from firezone.wireguard.messages import HandshakeInitiation, HandshakeResponse
from firezone.wireguard.noise import (
    HandshakeError,
    HandshakeState,
    NoiseHandshake,
    StaticIdentity,
    open_initiation,
)

from .support import load_vectors, seeded

WALL = 1_800_000_000.0


def identities(seed: int = 0) -> tuple[StaticIdentity, StaticIdentity]:
    a = StaticIdentity.from_private_key(generate_private_key(seeded(seed + 1)))
    b = StaticIdentity.from_private_key(generate_private_key(seeded(seed + 2)))
    return a, b


def fixed_random(*chunks: bytes) -> Any:
    """A rand_bytes that returns the given chunks in order (recorded ephemeral keys)."""
    queue = list(chunks)

    def rand_bytes(n: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == n, (len(chunk), n)
        return chunk

    return rand_bytes


def run_handshake(
    psk_i: bytes | None, psk_r: bytes | None, wall: float = WALL
) -> tuple[NoiseHandshake, NoiseHandshake]:
    a, b = identities()
    initiator = NoiseHandshake(a, b.public_key, psk_i, seeded(5))
    responder = NoiseHandshake(b, a.public_key, psk_r, seeded(6))
    init = initiator.create_initiation(111, wall)
    opened = open_initiation(b, HandshakeInitiation.decode(init.encode()))
    responder.consume_initiation(opened, 0.0)
    response = responder.create_response(222)
    initiator.consume_response(HandshakeResponse.decode(response.encode()))
    return initiator, responder


class HandshakeTests(SynchronousTestCase):
    def test_keys_agree_without_psk(self) -> None:
        """Both sides derive mirrored transport keys (initiator send = responder receive)."""
        initiator, responder = run_handshake(None, None)
        ki, kr = initiator.derive_keys(), responder.derive_keys()
        self.assertEqual(ki.sending_key, kr.receiving_key)
        self.assertEqual(ki.receiving_key, kr.sending_key)
        self.assertNotEqual(ki.sending_key, ki.receiving_key)
        self.assertEqual((ki.local_index, ki.remote_index), (111, 222))
        self.assertEqual((kr.local_index, kr.remote_index), (222, 111))
        self.assertTrue(ki.is_initiator)
        self.assertFalse(kr.is_initiator)

    def test_keys_agree_with_psk(self) -> None:
        """With the same PSK the keys agree, and differ from the keys without PSK."""
        psk = bytes(range(32))
        initiator, responder = run_handshake(psk, psk)
        ki, kr = initiator.derive_keys(), responder.derive_keys()
        self.assertEqual(ki.sending_key, kr.receiving_key)
        plain_i, _ = run_handshake(None, None)
        self.assertNotEqual(ki.sending_key, plain_i.derive_keys().sending_key)

    def test_wrong_psk_fails_response(self) -> None:
        """A PSK mismatch is only noticed by the initiator: the empty payload fails to decrypt."""
        self.assertRaises(HandshakeError, run_handshake, bytes(range(32)), bytes(32))
        try:
            run_handshake(None, b"\x01" * 32)
        except HandshakeError as e:
            self.assertEqual(e.reason, "decrypt")
        else:
            self.fail("mismatched PSK accepted")

    def test_initiation_to_wrong_responder(self) -> None:
        """An initiation for another static key does not decrypt at this responder."""
        a, b = identities()
        c = StaticIdentity.from_private_key(generate_private_key(seeded(99)))
        init = NoiseHandshake(a, b.public_key, None, seeded(5)).create_initiation(1, WALL)
        with self.assertRaises(HandshakeError) as cm:
            open_initiation(c, init)
        self.assertEqual(cm.exception.reason, "decrypt")

    def test_impersonation_fails(self) -> None:
        """Claiming a static public key without its private key fails at the timestamp."""
        a, b = identities()
        mallory_private = generate_private_key(seeded(77))
        fake = StaticIdentity(mallory_private, a.public_key, a.responder_hash)
        init = NoiseHandshake(fake, b.public_key, None, seeded(5)).create_initiation(1, WALL)
        opened = open_initiation(b, init)
        self.assertEqual(opened.remote_static, a.public_key)
        responder = NoiseHandshake(b, a.public_key)
        with self.assertRaises(HandshakeError) as cm:
            responder.consume_initiation(opened, 0.0)
        self.assertEqual(cm.exception.reason, "decrypt")

    def test_timestamp_replay_rejected(self) -> None:
        """Paper 5.1: the responder "discards packets containing timestamps less than or
        equal to" the greatest one it has seen from that peer."""
        a, b = identities()
        initiator = NoiseHandshake(a, b.public_key, None, seeded(5))
        responder = NoiseHandshake(b, a.public_key)
        first = initiator.create_initiation(1, WALL)
        responder.consume_initiation(open_initiation(b, first), 0.0)
        for msg, now in ((first, 10.0), (initiator.create_initiation(2, WALL - 60), 20.0)):
            with self.assertRaises(HandshakeError) as cm:
                responder.consume_initiation(open_initiation(b, msg), now)
            self.assertEqual(cm.exception.reason, "stale_timestamp")
        newer = initiator.create_initiation(3, WALL + 1)
        self.assertEqual(
            responder.consume_initiation(open_initiation(b, newer), 30.0), tai64n(WALL + 1)
        )

    def test_flood_rejected(self) -> None:
        """A second initiation within 1/50 s is refused even with a newer timestamp."""
        a, b = identities()
        initiator = NoiseHandshake(a, b.public_key, None, seeded(5))
        responder = NoiseHandshake(b, a.public_key)
        responder.consume_initiation(open_initiation(b, initiator.create_initiation(1, WALL)), 1.0)
        second = initiator.create_initiation(2, WALL + 1)
        with self.assertRaises(HandshakeError) as cm:
            responder.consume_initiation(open_initiation(b, second), 1.01)
        self.assertEqual(cm.exception.reason, "flood")

    def test_state_machine(self) -> None:
        """Responses need a pending initiation with the same index; keys need a finished one."""
        a, b = identities()
        hs = NoiseHandshake(a, b.public_key, None, seeded(5))
        self.assertRaises(HandshakeError, hs.derive_keys)
        self.assertRaises(HandshakeError, hs.create_response, 1)
        initiator, _ = run_handshake(None, None)
        self.assertIs(initiator.state, HandshakeState.RESPONSE_CONSUMED)
        initiator.derive_keys()
        self.assertIs(initiator.state, HandshakeState.ZEROED)
        self.assertIsNone(initiator.local_index)
        stray = HandshakeResponse(5, 111, public_key(bytes(range(32))), bytes(16))
        self.assertRaises(HandshakeError, initiator.consume_response, stray)

    def test_low_order_peer_key(self) -> None:
        """A peer key giving a zero static-static secret cannot start handshakes."""
        a, _ = identities()
        hs = NoiseHandshake(a, bytes(32))
        with self.assertRaises(HandshakeError) as cm:
            hs.create_initiation(1, WALL)
        self.assertEqual(cm.exception.reason, "bad_key")


class WireguardGoVectorTests(SynchronousTestCase):
    """Traffic recorded from a real exchange with wireguard-go (see wireguard_go_vectors.json)."""

    def setUp(self) -> None:
        self.v: dict[str, Any] = load_vectors()
        self.ours = StaticIdentity.from_private_key(bytes.fromhex(self.v["our_private_key"]))
        self.theirs = bytes.fromhex(self.v["their_public_key"])
        self.psk = bytes.fromhex(self.v["preshared_key"])

    def test_our_initiation_is_reproducible_and_accepted(self) -> None:
        """Our initiation is byte-identical given the same randomness, and wireguard-go's
        response to it yields keys that decrypt wireguard-go's first transport packet."""
        s = self.v["we_initiate"]
        self.assertEqual(self.ours.public_key.hex(), self.v["our_public_key"])
        index_bytes = bytes.fromhex(s["sender_index"])
        hs = NoiseHandshake(
            self.ours, self.theirs, self.psk, fixed_random(bytes.fromhex(s["ephemeral_private"]))
        )
        init = hs.create_initiation(int.from_bytes(index_bytes, "little"), s["wall_time"])
        encoded = CookieGenerator(self.theirs).add_macs(init.encode(), 0.0)
        self.assertEqual(encoded.hex(), s["initiation"])
        hs.consume_response(HandshakeResponse.decode(bytes.fromhex(s["response"])))
        keys = hs.derive_keys()
        transport = bytes.fromhex(s["first_transport"])
        self.assertEqual(transport[4:8], index_bytes)
        plain = ChaCha20Poly1305(keys.receiving_key).decrypt(
            b"\0" * 4 + transport[8:16], transport[16:], None
        )
        # an ICMP echo reply from 198.18.0.1 to 198.18.0.2, padded to 16
        self.assertEqual(plain[0], 0x45)
        self.assertEqual(plain[12:20], bytes([198, 18, 0, 1, 198, 18, 0, 2]))
        self.assertEqual(plain[20], 0)
        self.assertEqual(len(plain) % 16, 0)

    def test_their_initiation_and_our_response(self) -> None:
        """We open wireguard-go's initiation, answer it byte-identically, and decrypt its
        first transport packet with the derived keys."""
        s = self.v["they_initiate"]
        msg = HandshakeInitiation.decode(bytes.fromhex(s["initiation"]))
        opened = open_initiation(self.ours, msg)
        self.assertEqual(opened.remote_static, self.theirs)
        hs = NoiseHandshake(
            self.ours, self.theirs, self.psk, fixed_random(bytes.fromhex(s["ephemeral_private"]))
        )
        timestamp = hs.consume_initiation(opened, 0.0)
        self.assertEqual(int.from_bytes(timestamp[8:], "big") & 0xFFFFFF, 0)  # whitened too
        index = int.from_bytes(bytes.fromhex(s["sender_index"]), "little")
        response = hs.create_response(index)
        self.assertEqual(
            CookieGenerator(self.theirs).add_macs(response.encode(), 0.0).hex(), s["response"]
        )
        keys = hs.derive_keys()
        transport = bytes.fromhex(s["first_transport"])
        plain = ChaCha20Poly1305(keys.receiving_key).decrypt(
            b"\0" * 4 + transport[8:16], transport[16:], None
        )
        self.assertEqual(plain[12:20], bytes([198, 18, 0, 1, 198, 18, 0, 2]))
        self.assertEqual(plain[20], 8)  # echo request

    def test_wrong_psk_against_wireguard_go(self) -> None:
        """wireguard-go's response does not verify under a different PSK."""
        s = self.v["we_initiate"]
        hs = NoiseHandshake(
            self.ours, self.theirs, bytes(32), fixed_random(bytes.fromhex(s["ephemeral_private"]))
        )
        hs.create_initiation(
            int.from_bytes(bytes.fromhex(s["sender_index"]), "little"), s["wall_time"]
        )
        with self.assertRaises(HandshakeError) as cm:
            hs.consume_response(HandshakeResponse.decode(bytes.fromhex(s["response"])))
        self.assertEqual(cm.exception.reason, "decrypt")
