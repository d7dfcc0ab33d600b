"""Device ids and tokens are found where the reference keeps them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from firezone.common.identity import load_or_create_id, new_device_id, read_token


class IdentityTests(SynchronousTestCase):
    def test_new_id_format(self) -> None:
        """Ids are hex(sha256(uuid4)): 64 lowercase hex characters, different every time."""
        a, b = new_device_id(), new_device_id()
        self.assertRegex(a, re.compile(r"^[0-9a-f]{64}$"))
        self.assertNotEqual(a, b)

    def test_id_is_created_once_and_kept(self) -> None:
        """The first start writes the id (mode 0600); later starts read the same one."""
        path = Path(self.mktemp()) / "sub" / "gateway_id"
        first = load_or_create_id(path)
        self.assertEqual(load_or_create_id(path), first)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_token_sources_in_order(self) -> None:
        """Explicit token, then the systemd credential, then the token file; whitespace stripped."""
        base = Path(self.mktemp())
        base.mkdir()
        creds = base / "creds"
        creds.mkdir()
        token_file = base / "token"
        token_file.write_text(" file-token\n")
        self.assertEqual(read_token(" a b\n", token_file, str(creds)), "ab")
        self.assertEqual(read_token(None, token_file, str(creds)), "file-token")
        (creds / "FIREZONE_TOKEN").write_text("cred-token\n")
        self.assertEqual(read_token(None, token_file, str(creds)), "cred-token")
        self.assertIsNone(read_token(None, base / "missing", None))
