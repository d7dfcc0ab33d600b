"""Transport message layout: header, counter nonce and padding."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from twisted.trial.unittest import SynchronousTestCase

from firezone.wireguard.keypair import Keypair
from firezone.wireguard.noise import SessionKeys

from .support import Link, ipv4_packet

SEND = bytes(range(32))
RECV = bytes(range(32, 64))


def keypair() -> Keypair:
    return Keypair(SessionKeys(SEND, RECV, True, 0x11223344, 0xAABBCCDD), 0.0)


class TransportLayoutTests(SynchronousTestCase):
    def test_header_and_nonce(self) -> None:
        """Type 4, receiver = remote index LE, counter LE; nonce = 4 zero bytes || counter LE."""
        kp = keypair()
        for counter in range(3):
            data = kp.seal(b"0123456789abcdef")
            self.assertEqual(data[:4], b"\x04\0\0\0")
            self.assertEqual(data[4:8], (0xAABBCCDD).to_bytes(4, "little"))
            self.assertEqual(data[8:16], counter.to_bytes(8, "little"))
            nonce = b"\0\0\0\0" + counter.to_bytes(8, "little")
            self.assertEqual(
                data[16:], ChaCha20Poly1305(SEND).encrypt(nonce, b"0123456789abcdef", None)
            )

    def test_large_counter(self) -> None:
        """High counters use all 8 nonce bytes."""
        kp = keypair()
        kp.send_counter = 0x0102030405060708
        data = kp.seal(b"")
        self.assertEqual(data[8:16].hex(), "0807060504030201")
        expected = ChaCha20Poly1305(SEND).encrypt(
            bytes.fromhex("000000000807060504030201"), b"", None
        )
        self.assertEqual(data[16:], expected)
        self.assertEqual(len(data), 32)

    def test_open(self) -> None:
        """A keypair opens what the mirrored keypair sealed."""
        other = Keypair(SessionKeys(RECV, SEND, False, 0xAABBCCDD, 0x11223344), 0.0)
        self.assertEqual(other.open(keypair().seal(b"x" * 32)), b"x" * 32)


class PaddingTests(SynchronousTestCase):
    def test_peer_pads_to_16(self) -> None:
        """The plaintext inside a transport message is zero-padded to a multiple of 16,
        and the receiver strips the padding using the IP length."""
        link = Link()
        link.handshake(0.0)
        for size in (0, 1, 15, 16, 17, 1259):
            packet = ipv4_packet(size)
            data = link.pa.encrypt(packet, 1.0)
            assert data is not None
            kp = link.pb.current
            assert kp is not None
            plain = kp.receive_aead.decrypt(b"\0" * 4 + data[8:16], data[16:], None)
            self.assertEqual(len(plain) % 16, 0)
            self.assertEqual(plain[: len(packet)], packet)
            self.assertEqual(plain[len(packet) :], bytes(len(plain) - len(packet)))
            # The receiver's view, through the device (a fresh counter).
            data2 = link.pa.encrypt(packet, 1.0)
            assert data2 is not None
            result = link.b.decrypt_transport(data2, 1.0)
            assert result is not None
            self.assertEqual(result[1], packet)

    def test_mtu_caps_padding(self) -> None:
        """With an MTU, padding never grows a packet beyond it (wireguard-go)."""
        from firezone.wireguard.device import DeviceConfig

        link = Link(config=DeviceConfig(mtu=1283))
        link.handshake(0.0)
        packet = ipv4_packet(1280 - 20 + 2)  # 1282 bytes: rounds to 1296, capped at 1283
        data = link.pa.encrypt(packet, 1.0)
        assert data is not None
        self.assertEqual(len(data), 16 + 1283 + 16)
