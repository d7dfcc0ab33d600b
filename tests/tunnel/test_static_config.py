"""The wg-quick style file of the static tunnel is parsed strictly."""

from __future__ import annotations

import base64
import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from firezone.tunnel.static_config import ConfigError, parse_static_config

KEY = base64.b64encode(b"k" * 32).decode()
PUB = base64.b64encode(b"p" * 32).decode()


class StaticConfigTests(SynchronousTestCase):
    def test_full_file(self) -> None:
        """Every key of the interface and of repeated peers is read."""
        config = parse_static_config(f"""
[Interface]
PrivateKey = {KEY}   # comment
ListenPort = 51820
Address = 100.64.0.1/32, fd00:2021:1111::1/128
MTU = 1280
RekeyAttemptTime = 20

[Peer]
PublicKey = {PUB}
AllowedIPs = 100.64.0.2/32, 198.18.0.0/15
Endpoint = 198.18.1.2:51821
PresharedKey = {KEY}
PersistentKeepalive = 25

[Peer]
PublicKey = {KEY}
Endpoint = [2001:db8::1]:5
""")
        self.assertEqual(config.private_key, b"k" * 32)
        self.assertEqual(config.listen_port, 51820)
        self.assertEqual(config.addresses, ["100.64.0.1/32", "fd00:2021:1111::1/128"])
        self.assertEqual(config.rekey_attempt_time, 20.0)
        self.assertEqual(len(config.peers), 2)
        first = config.peers[0]
        self.assertEqual(first.public_key, b"p" * 32)
        self.assertEqual(first.allowed_ips[1], ipaddress.ip_network("198.18.0.0/15"))
        self.assertEqual(first.endpoint, ("198.18.1.2", 51821))
        self.assertEqual((first.preshared_key, first.persistent_keepalive), (b"k" * 32, 25))
        self.assertEqual(config.peers[1].endpoint, ("2001:db8::1", 5))

    def test_errors_name_the_problem(self) -> None:
        """Malformed files raise ConfigError with the line or section at fault."""
        cases = {
            "[Interface]\nListenPort = 1\n": "PrivateKey",
            f"[Interface]\nPrivateKey = {KEY}\n[Peer]\nAllowedIPs = 1.2.3.0/24\n": "PublicKey",
            "[Interface]\nPrivateKey = short\n": "line 2",
            f"[Interface]\nPrivateKey = {KEY}\n[Peer]\nPublicKey = {PUB}\nEndpoint = x:1\n":
                "endpoint",
            f"[Interface]\nPrivateKey = {KEY}\nAddress = 300.1.1.1/32\n": "not an address",
            f"[Bogus]\nPrivateKey = {KEY}\n": "unknown section",
            "PrivateKey = x\n": "inside a section",
        }
        for text, fragment in cases.items():
            with self.assertRaises(ConfigError) as ctx:
                parse_static_config(text)
            self.assertIn(fragment, str(ctx.exception))
