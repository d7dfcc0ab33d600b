"""Known answers for the WireGuard primitives."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.wireguard import crypto
from firezone.wireguard.noise import INITIAL_CHAIN_KEY, INITIAL_HASH

from .support import seeded

# wireguard-go device/kdf_test.go: (key, input, t0, t1, t2)
KDF_VECTORS = [
    (
        "746573742d6b6579",
        "746573742d696e707574",
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
        "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
        "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
    ),
    (
        "776972656775617264",
        "776972656775617264",
        "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
        "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
        "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
    ),
    (
        "",
        "",
        "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
        "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
        "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
    ),
]


class HashTests(SynchronousTestCase):
    def test_construction_hash(self) -> None:
        """HASH(CONSTRUCTION), the initial chaining key, begins 60e26dae."""
        self.assertTrue(crypto.blake2s_hash(crypto.CONSTRUCTION).hex().startswith("60e26dae"))
        self.assertEqual(INITIAL_CHAIN_KEY, crypto.blake2s_hash(crypto.CONSTRUCTION))

    def test_initial_hash(self) -> None:
        """The initial transcript hash is HASH(Ci || IDENTIFIER)."""
        expected = hashlib.blake2s(INITIAL_CHAIN_KEY + crypto.IDENTIFIER).digest()
        self.assertEqual(INITIAL_HASH, expected)

    def test_hash_concatenates(self) -> None:
        """HASH of several parts equals HASH of their concatenation."""
        self.assertEqual(crypto.blake2s_hash(b"ab", b"cd"), hashlib.blake2s(b"abcd").digest())

    def test_mac_is_keyed_blake2s_128(self) -> None:
        """MAC is keyed BLAKE2s with a 16-byte output (RFC 7693 keyed mode)."""
        key = bytes(range(32))
        out = crypto.mac(key, b"message")
        self.assertEqual(len(out), 16)
        self.assertEqual(out, hashlib.blake2s(b"message", key=key, digest_size=16).digest())
        self.assertNotEqual(out, crypto.mac(bytes(32), b"message"))

    def test_hmac(self) -> None:
        """HMAC is RFC 2104 over BLAKE2s-256 (64-byte block)."""
        key, msg = b"k" * 40, b"data"
        block = key.ljust(64, b"\0")
        inner = hashlib.blake2s(bytes(b ^ 0x36 for b in block) + msg).digest()
        outer = hashlib.blake2s(bytes(b ^ 0x5C for b in block) + inner).digest()
        self.assertEqual(crypto.hmac_blake2s(key, msg), outer)
        self.assertEqual(outer, hmac.new(key, msg, hashlib.blake2s).digest())


class KdfTests(SynchronousTestCase):
    def test_kdf_vectors(self) -> None:
        """KDF1/2/3 reproduce wireguard-go's kdf_test.go answers."""
        for key, data, t0, t1, t2 in KDF_VECTORS:
            k, d = bytes.fromhex(key), bytes.fromhex(data)
            self.assertEqual(crypto.kdf1(k, d).hex(), t0)
            self.assertEqual([x.hex() for x in crypto.kdf2(k, d)], [t0, t1])
            self.assertEqual([x.hex() for x in crypto.kdf3(k, d)], [t0, t1, t2])


class AeadTests(SynchronousTestCase):
    def test_nonce_layout(self) -> None:
        """The AEAD nonce is 4 zero bytes then the 64-bit counter little-endian."""
        self.assertEqual(crypto.counter_nonce(0x0102030405060708).hex(), "000000000807060504030201")

    def test_aead_matches_chacha20poly1305(self) -> None:
        """AEAD(k, n, p, a) is IETF ChaCha20-Poly1305 with the counter nonce."""
        key = bytes(range(32))
        ct = crypto.aead_encrypt(key, 7, b"hello", b"ad")
        self.assertEqual(
            ct,
            ChaCha20Poly1305(key).encrypt(b"\0" * 4 + (7).to_bytes(8, "little"), b"hello", b"ad"),
        )
        self.assertEqual(crypto.aead_decrypt(key, 7, ct, b"ad"), b"hello")
        self.assertRaises(crypto.WireGuardCryptoError, crypto.aead_decrypt, key, 8, ct, b"ad")
        self.assertRaises(crypto.WireGuardCryptoError, crypto.aead_decrypt, key, 7, ct, b"AD")

    def test_xaead_roundtrip(self) -> None:
        """XAEAD round-trips and rejects a different nonce or associated data."""
        key, nonce = bytes(range(32)), bytes(range(24))
        ct = crypto.xaead_encrypt(key, nonce, b"cookie-cookie-16", b"mac1")
        self.assertEqual(len(ct), 32)
        self.assertEqual(crypto.xaead_decrypt(key, nonce, ct, b"mac1"), b"cookie-cookie-16")
        self.assertRaises(
            crypto.WireGuardCryptoError, crypto.xaead_decrypt, key, bytes(24), ct, b"mac1"
        )
        self.assertRaises(
            crypto.WireGuardCryptoError, crypto.xaead_decrypt, key, nonce, ct, b"mac2"
        )


class X25519Tests(SynchronousTestCase):
    def test_rfc7748_vector(self) -> None:
        """RFC 7748 section 6.1: Alice's and Bob's keys and shared secret."""
        alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
        bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
        alice_pub = crypto.public_key(alice)
        self.assertEqual(
            alice_pub.hex(), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        )
        shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        self.assertEqual(crypto.dh(bob, alice_pub).hex(), shared)
        self.assertEqual(crypto.dh(alice, crypto.public_key(bob)).hex(), shared)

    def test_low_order_point_rejected(self) -> None:
        """A DH result of all zeros (low-order public key) is an error."""
        self.assertRaises(crypto.WireGuardCryptoError, crypto.dh, bytes(range(32)), bytes(32))

    def test_generated_keys_are_clamped(self) -> None:
        """generate_private_key clamps like `wg genkey`."""
        for seed in range(20):
            k = crypto.generate_private_key(seeded(seed))
            self.assertEqual(k[0] & 7, 0)
            self.assertEqual(k[31] & 0xC0, 0x40)

    def test_wrong_sizes_rejected(self) -> None:
        """Keys of the wrong length raise the module's error."""
        self.assertRaises(crypto.WireGuardCryptoError, crypto.public_key, b"short")
        self.assertRaises(crypto.WireGuardCryptoError, crypto.dh, bytes(32), b"short")


class Tai64nTests(SynchronousTestCase):
    def test_encoding(self) -> None:
        """TAI64N: 2^62 + 10 + seconds big-endian, then whitened nanoseconds."""
        label = crypto.tai64n(1_700_000_000.5)
        self.assertEqual(label[:8], (0x400000000000000A + 1_700_000_000).to_bytes(8, "big"))
        nanos = int.from_bytes(label[8:], "big")
        self.assertEqual(nanos & 0xFFFFFF, 0)
        self.assertEqual(nanos, 500_000_000 & ~0xFFFFFF)

    @settings(max_examples=200)
    @given(st.floats(0, 4e9), st.floats(0.02, 1e6))
    def test_monotonic(self, t: float, dt: float) -> None:
        """Later wall times give lexicographically greater labels (>= 16.8 ms apart)."""
        self.assertGreater(crypto.tai64n(t + dt), crypto.tai64n(t))


class KeyEncodingTests(SynchronousTestCase):
    def test_roundtrip(self) -> None:
        """Keys print as 44-character standard base64, as wg does."""
        key = bytes(range(32))
        text = crypto.key_to_base64(key)
        self.assertEqual(len(text), 44)
        self.assertEqual(text, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
        self.assertEqual(crypto.key_from_base64(text + "\n"), key)

    def test_malformed(self) -> None:
        """Bad base64 or a wrong length raise WireGuardCryptoError."""
        for bad in ["", "not base64!", "AAAA", crypto.key_to_base64(bytes(32))[:-2]]:
            self.assertRaises(crypto.WireGuardCryptoError, crypto.key_from_base64, bad)

    @settings(max_examples=200)
    @given(st.text(max_size=60))
    def test_arbitrary_text(self, text: str) -> None:
        """Any text either decodes to 32 bytes or raises WireGuardCryptoError."""
        try:
            self.assertEqual(len(crypto.key_from_base64(text)), 32)
        except crypto.WireGuardCryptoError:
            pass
