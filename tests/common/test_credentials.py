"""Known-answer tests for firezone.credentials (REFERENCE.md 2.5).

Each formula is recomputed here step by step with hashlib, and pinned to a literal
string so that a silent change of the formula (and of this recomputation) fails.
"""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.credentials import (
    REALM,
    IceCredentials,
    ice_credentials,
    long_term_key,
    parse_turn_username,
    turn_credentials,
    turn_password,
    turn_salt,
    turn_username,
    wireguard_psk,
    wireguard_psk_client_to_client,
)

PUBKEY = "2kvHKGh+Q1e1cS0Bq0vPl9L9GQfvjFXMBasqFHDH+3E="
SECRET = "secret"
EXPIRY = 1700000000


class TurnCredentialTests(SynchronousTestCase):
    def test_salt_is_b64_nopad_sha256_of_key_string(self) -> None:
        """salt = base64_nopad(sha256(device_public_key_b64_string))."""
        digest = hashlib.sha256(PUBKEY.encode()).digest()
        expected = base64.b64encode(digest).decode().rstrip("=")
        self.assertEqual(turn_salt(PUBKEY), expected)
        self.assertEqual(turn_salt(PUBKEY), "4fqk/NesdK+xZnbia/W9NV7X1JV2PXelxgmvtwicJUs")
        self.assertNotIn("=", turn_salt(PUBKEY))

    def test_username_is_expiry_colon_salt(self) -> None:
        """username = "<expires_unix>:<salt>"."""
        self.assertEqual(turn_username(EXPIRY, "abc"), "1700000000:abc")

    def test_password_formula(self) -> None:
        """password = base64_nopad(sha256("<expiry>:<stamp_secret>:<salt>"))."""
        salt = turn_salt(PUBKEY)
        digest = hashlib.sha256(f"{EXPIRY}:{SECRET}:{salt}".encode()).digest()
        expected = base64.b64encode(digest).decode().rstrip("=")
        self.assertEqual(turn_password(f"{EXPIRY}:{salt}", SECRET), expected)

    def test_credentials_literal(self) -> None:
        """The (username, password) pair for fixed inputs never drifts."""
        self.assertEqual(
            turn_credentials(PUBKEY, SECRET, EXPIRY),
            (
                "1700000000:4fqk/NesdK+xZnbia/W9NV7X1JV2PXelxgmvtwicJUs",
                "LwFwkaYICEtNk55aDOUgvLYIE0hLWmiyDVkago7wGyQ",
            ),
        )

    def test_reference_relay_vectors(self) -> None:
        """The relay's own auth.rs vectors (generate_password_test_vector[_elixir]) hold."""
        self.assertEqual(
            turn_password(
                f"{60 * 60 * 24 * 365 * 60}:n23JJ2wKKtt30oXi",
                "4c98bf59c99b3e467ecd7cf9d6b3e5279645fca59be67bc5bb4af3cf653761ab",
            ),
            "00hqldgk5xLeKKOB+xls9mHMVtgqzie9DulfgQwMv68",
        )
        self.assertEqual(
            turn_password("1685984278:uvdgKvS9GXYZ_vmv", "1cab293a-4032-46f4-862a-40e5d174b0d2"),
            "6xUIoZ+QvxKhRasLifwfRkMXl+ETLJUsFkHlXjlHAkg",
        )

    def test_different_secret_changes_password(self) -> None:
        """Nobody without the relay's secret can mint the password."""
        username = turn_username(EXPIRY, "salt")
        self.assertNotEqual(turn_password(username, "a"), turn_password(username, "b"))

    def test_parse_username(self) -> None:
        """Usernames split into (expiry, salt) exactly like the relay's split_username."""
        self.assertEqual(parse_turn_username("12:abc"), (12, "abc"))
        for bad in ["foobar", "1:2:3", ":salt", "x1:salt", "+1:salt", "-1:salt",
                    f"{2**64}:salt", "\u0661:salt"]:
            with self.assertRaises(ValueError, msg=bad):
                parse_turn_username(bad)
        with self.assertRaises(ValueError):
            turn_password("nocolon", SECRET)

    @settings(max_examples=200)
    @given(st.integers(min_value=0, max_value=2**64 - 1), st.text(min_size=1).filter(
        lambda s: ":" not in s))
    def test_username_round_trip(self, expiry: int, salt: str) -> None:
        """parse_turn_username inverts turn_username."""
        self.assertEqual(parse_turn_username(turn_username(expiry, salt)), (expiry, salt))

    def test_long_term_key(self) -> None:
        """key = MD5(username ":" realm ":" password) (RFC 8489 9.2.2)."""
        expected = hashlib.md5(b"1700000000:x:firezone:pw").digest()
        self.assertEqual(long_term_key("1700000000:x", REALM, "pw"), expected)
        self.assertEqual(
            long_term_key("1700000000:x", "firezone", "pw").hex(),
            "fa125e6ee568cb3e3cdffd08ef68af5d",
        )
        self.assertEqual(REALM, "firezone")


class WireguardPskTests(SynchronousTestCase):
    CLIENT_BASE = bytes(range(32))
    GATEWAY_BASE = bytes(range(32, 64))

    def test_psk_formula(self) -> None:
        """psk = base64(pbkdf2_hmac_sha256(c_base || g_base, "WG_PSK|C_ID:..|...", 1, 32))."""
        salt = b"WG_PSK|C_ID:c-id|G_ID:g-id|C_PK:CPK|G_PK:GPK"
        raw = hashlib.pbkdf2_hmac("sha256", self.CLIENT_BASE + self.GATEWAY_BASE, salt, 1, 32)
        expected = base64.b64encode(raw).decode()
        psk = wireguard_psk(self.CLIENT_BASE, self.GATEWAY_BASE, "c-id", "g-id", "CPK", "GPK")
        self.assertEqual(psk, expected)
        self.assertEqual(psk, "abWnDMwGmrBajFSWscfeKB85SG68ijU6IN+mwuc8/WE=")
        self.assertEqual(len(base64.b64decode(psk)), 32)

    def test_psk_depends_on_order(self) -> None:
        """Swapping client and gateway gives a different key (the salt names the roles)."""
        a = wireguard_psk(self.CLIENT_BASE, self.GATEWAY_BASE, "c-id", "g-id", "CPK", "GPK")
        b = wireguard_psk(self.GATEWAY_BASE, self.CLIENT_BASE, "g-id", "c-id", "GPK", "CPK")
        self.assertNotEqual(a, b)

    def test_client_to_client_psk_formula(self) -> None:
        """Client-to-client salt is "WG_PSK_CC|CA_ID:..|CB_ID:..|CA_PK:..|CB_PK:..."."""
        salt = b"WG_PSK_CC|CA_ID:a-id|CB_ID:b-id|CA_PK:APK|CB_PK:BPK"
        raw = hashlib.pbkdf2_hmac("sha256", self.CLIENT_BASE + self.GATEWAY_BASE, salt, 1, 32)
        psk = wireguard_psk_client_to_client(
            self.CLIENT_BASE, self.GATEWAY_BASE, "a-id", "b-id", "APK", "BPK"
        )
        self.assertEqual(psk, base64.b64encode(raw).decode())
        self.assertEqual(psk, "ox5FhlS18uuL6bU5jbTA0o2Z/Ng+pYiARBmjwH5cHhc=")


class IceCredentialTests(SynchronousTestCase):
    def test_ice_formula(self) -> None:
        """h = base32_lower_nopad(sha256(seed)); slices 0..3, 4..25, 26..29, 30..52 inclusive."""
        seed = b"c-id:CPK:g-id:GPK"
        h = base64.b32encode(hashlib.sha256(seed).digest()).decode().lower().rstrip("=")
        self.assertEqual(len(h), 52)
        creds = ice_credentials("c-id", "CPK", "g-id", "GPK")
        self.assertEqual(creds, IceCredentials(h[:4], h[4:26], h[26:30], h[30:]))
        self.assertEqual(
            creds,
            IceCredentials(
                initiator_username="jwpj",
                initiator_password="zka4o4wvb5xuoauo4dqwyx",
                receiver_username="wpez",
                receiver_password="kx2yze4qopdxi5kolbfkha",
            ),
        )

    @settings(max_examples=100)
    @given(st.text(), st.text(), st.text(), st.text())
    def test_ice_lengths(self, a: str, b: str, c: str, d: str) -> None:
        """Usernames are 4 characters and passwords 22 (the ICE minimum), in [a-z2-7]."""
        creds = ice_credentials(a, b, c, d)
        self.assertEqual(
            [len(creds.initiator_username), len(creds.initiator_password),
             len(creds.receiver_username), len(creds.receiver_password)],
            [4, 22, 4, 22],
        )
        joined = (creds.initiator_username + creds.initiator_password
                  + creds.receiver_username + creds.receiver_password)
        self.assertTrue(set(joined) <= set("abcdefghijklmnopqrstuvwxyz234567"))
