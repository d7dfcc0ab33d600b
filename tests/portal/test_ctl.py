"""firezone-ctl end to end on SQLite: output, exit codes, and nothing changed on errors."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import uuid

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from firezone.portal.ctl import main
from firezone.portal.store.sqlite import SQLiteStore
from firezone.portal.tokens import DeletedToken, Tokens, load_or_create_secret_key


class CtlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.db = os.path.join(self.data_dir, "portal.db")

    def ctl(self, *argv: str, code: int = 0) -> list[str]:
        """Run firezone-ctl in-process; check the exit status; return stdout lines."""
        out, err = io.StringIO(), io.StringIO()
        status = main(["--data-dir", self.data_dir, "--api-url", "wss://portal.test/", *argv],
                      stdout=out, stderr=err, environ={})
        self.last_error = err.getvalue()
        self.assertEqual(status, code, f"stdout={out.getvalue()!r} stderr={self.last_error!r}")
        if code:
            self.assertEqual(self.last_error.count("\n"), 1, self.last_error)
            self.assertTrue(self.last_error.startswith("firezone-ctl: error: "))
            self.assertEqual(out.getvalue(), "")
        else:
            self.assertEqual(self.last_error, "")
        return out.getvalue().splitlines()

    def fails(self, code: int, *argv: str) -> str:
        """The command fails with ``code`` and leaves the database byte-for-byte alone."""
        before = self.snapshot()
        self.ctl(*argv, code=code)
        self.assertEqual(self.snapshot(), before)
        return self.last_error

    def snapshot(self) -> list[str]:
        if not os.path.exists(self.db):
            return []
        with sqlite3.connect(self.db) as connection:
            return list(connection.iterdump())

    def env(self, lines: list[str]) -> dict[str, str]:
        return dict(line.split("=", 1) for line in lines)

    def tokens(self) -> Tokens:
        clock = Clock()
        clock.advance(__import__("time").time())
        store = SQLiteStore.open(self.db, clock)
        self.addCleanup(store.close)
        key = load_or_create_secret_key(os.path.join(self.data_dir, "secret_key"))
        return Tokens(store, key, clock)

    def account(self) -> dict[str, str]:
        return self.env(self.ctl("account", "create", "--slug", "acme", "--name", "Acme",
                                 "--admin-email", "admin@acme.test"))

    def test_account_create(self) -> None:
        """account create prints the new ids, and the account is listed."""
        ids = self.account()
        self.assertEqual(set(ids), {"ACCOUNT_ID", "ACCOUNT_SLUG", "EVERYONE_GROUP_ID",
                                    "EMAIL_PROVIDER_ID", "ADMIN_ACTOR_ID"})
        listed = self.ctl("list", "accounts")
        self.assertEqual(listed[0], "id\tslug\tname")
        self.assertEqual(listed[1], f"{ids['ACCOUNT_ID']}\tacme\tAcme")
        actors = json.loads(self.ctl("list", "actors", "--account", "acme", "--json")[0])
        self.assertEqual([(a["type"], a["email"]) for a in actors],
                         [("account_admin_user", "admin@acme.test")])

    def test_account_create_refused(self) -> None:
        """A bad or taken slug or a bad email changes nothing and exits 1."""
        self.ctl("list", "accounts")  # creates the (empty) database
        self.assertIn("slug", self.fails(1, "account", "create", "--slug", "A!", "--name", "x"))
        self.account()
        self.assertIn("already exists",
                      self.fails(1, "account", "create", "--slug", "acme", "--name", "x"))
        self.fails(1, "account", "create", "--slug", "beta", "--name", "x",
                   "--admin-email", "nope")
        self.fails(1, "account", "create", "--slug", "beta", "--name", "x", "--dns", "1.2.3")

    def test_usage_errors(self) -> None:
        """Malformed command lines exit 2 with one line and change nothing."""
        self.account()
        self.fails(2, "bogus")
        self.fails(2, "site", "create", "--account", "acme")
        self.fails(2, "resource", "create", "--account", "acme", "--type", "cidr",
                   "--address", "10.0.0.0/8")
        self.fails(2, "resource", "create", "--account", "acme", "--type", "nope",
                   "--address", "10.0.0.0/8", "--site", "x")
        self.fails(2, "policy", "create", "--account", "acme", "--group", "Everyone",
                   "--resource", str(uuid.uuid4()), "--condition", "{not json")
        self.fails(2, "--database", "mysql://x/y", "list", "accounts")
        self.fails(2, "list", "sites")  # needs --account

    def test_gateway_token_create(self) -> None:
        """gateway-token create prints the gateway's env; the token verifies as gateway."""
        self.account()
        site_id = self.ctl("site", "create", "--account", "acme", "--name", "HQ")[0]
        env = self.env(self.ctl("gateway-token", "create", "--account", "acme", "--site", "HQ"))
        self.assertEqual(set(env), {"FIREZONE_TOKEN", "FIREZONE_API_URL", "FIREZONE_ID"})
        self.assertEqual(env["FIREZONE_API_URL"], "wss://portal.test/")
        self.assertEqual(len(env["FIREZONE_ID"]), 64)
        token = self.successResultOf(self.tokens().verify(env["FIREZONE_TOKEN"], "gateway"))
        self.assertEqual(token.site_id, site_id)
        by_id = self.env(self.ctl("gateway-token", "create", "--account", "acme",
                                  "--site", site_id, "--gateway-id", "gw-1"))
        self.assertEqual(by_id["FIREZONE_ID"], "gw-1")
        self.fails(1, "gateway-token", "create", "--account", "acme", "--site", "Nowhere")
        self.fails(1, "gateway-token", "create", "--account", "nope", "--site", "HQ")

    def test_relay_token_create_and_revoke(self) -> None:
        """relay-token create issues a global token; revoke token deletes it."""
        env = self.env(self.ctl("relay-token", "create"))
        tokens = self.tokens()
        token = self.successResultOf(tokens.verify(env["FIREZONE_TOKEN"], "relay"))
        listed = self.ctl("list", "relay-tokens")
        self.assertEqual(listed[1].split("\t")[0], token.id)
        self.ctl("revoke", "token", token.id)
        self.failureResultOf(tokens.verify(env["FIREZONE_TOKEN"], "relay"), DeletedToken)
        self.fails(1, "revoke", "token", token.id)

    def test_resource_create(self) -> None:
        """resource create stores validated filters; bad addresses change nothing."""
        self.account()
        self.ctl("site", "create", "--account", "acme", "--name", "HQ")
        resource_id = self.ctl(
            "resource", "create", "--account", "acme", "--type", "cidr", "--address",
            "10.0.0.9/24", "--site", "HQ", "--filter", "tcp/80", "--filter", "tcp/443",
            "--filter", "udp/1000-2000", "--filter", "icmp")[0]
        (resource,) = json.loads(self.ctl("list", "resources", "--account", "acme", "--json")[0])
        self.assertEqual(resource["id"], resource_id)
        self.assertEqual(resource["address"], "10.0.0.0/24")
        self.assertEqual(resource["filters"], [
            {"protocol": "tcp", "ports": ["80", "443"]},
            {"protocol": "udp", "ports": ["1000-2000"]},
            {"protocol": "icmp", "ports": []}])
        dns = ["resource", "create", "--account", "acme", "--type", "dns", "--site", "HQ"]
        self.ctl(*dns, "--address", "**.corp.example", "--ip-stack", "ipv4_only")
        self.assertIn("CIDR", self.fails(1, "resource", "create", "--account", "acme",
                                         "--type", "cidr", "--address", "10.0.0.0/33",
                                         "--site", "HQ"))
        self.fails(1, *dns, "--address", "*.*")
        self.fails(1, *dns, "--address", "ok.example", "--filter", "tcp/99999")
        self.fails(1, *dns, "--address", "ok.example", "--filter", "gre")
        self.fails(1, "resource", "create", "--account", "acme", "--type", "cidr",
                   "--address", "10.1.0.0/16", "--site", "HQ", "--ip-stack", "dual")
        self.fails(1, *dns[:-1], "Elsewhere", "--address", "ok.example")

    def test_policy_create(self) -> None:
        """policy create validates conditions; a bad time window changes nothing."""
        self.account()
        self.ctl("site", "create", "--account", "acme", "--name", "HQ")
        resource_id = self.ctl("resource", "create", "--account", "acme", "--type", "ip",
                               "--address", "10.0.0.1", "--site", "HQ")[0]
        window = {"property": "current_utc_datetime",
                  "operator": "is_in_day_of_week_time_ranges"}
        policy = ["policy", "create", "--account", "acme", "--group", "Everyone",
                  "--resource", resource_id]
        self.assertIn("current_utc_datetime", self.fails(
            1, *policy, "--condition", json.dumps({**window, "values": ["X/9-17/UTC"]})))
        self.fails(1, *policy, "--condition",
                   json.dumps({**window, "values": ["M/09:00-17:00/Not/AZone"]}))
        self.fails(1, "policy", "create", "--account", "acme", "--group", "Everyone",
                   "--resource", str(uuid.uuid4()))
        self.fails(1, "policy", "create", "--account", "acme", "--group", "Nobody",
                   "--resource", resource_id)
        policy_id = self.ctl(*policy, "--condition",
                             json.dumps({**window, "values": ["M/09:00-17:00/UTC"]}))[0]
        listed = self.ctl("list", "policies", "--account", "acme")
        self.assertEqual(listed[1].split("\t")[0], policy_id)

    def test_groups_memberships_service_accounts(self) -> None:
        """Groups, memberships by email, service accounts and their client tokens."""
        ids = self.account()
        group_id = self.ctl("group", "create", "--account", "acme", "--name", "Eng")[0]
        membership_id = self.ctl("membership", "add", "--account", "acme", "--group", "Eng",
                                 "--actor", "admin@acme.test")[0]
        listed = self.ctl("list", "memberships", "--account", "acme")
        self.assertEqual(listed[1], f"{membership_id}\t{group_id}\t{ids['ADMIN_ACTOR_ID']}")
        self.fails(1, "membership", "add", "--account", "acme", "--group", "Eng",
                   "--actor", "admin@acme.test")
        self.fails(1, "membership", "add", "--account", "acme", "--group", "Everyone",
                   "--actor", "admin@acme.test")
        bot = self.ctl("service-account", "create", "--account", "acme", "--name", "ci")[0]
        env = self.env(self.ctl("client-token", "create", "--account", "acme", "--actor", bot,
                                "--expires-in-days", "2"))
        token = self.successResultOf(self.tokens().verify(env["FIREZONE_TOKEN"], "client"))
        self.assertEqual(token.actor_id, bot)
        self.assertIn("service accounts", self.fails(
            1, "client-token", "create", "--account", "acme", "--actor", ids["ADMIN_ACTOR_ID"]))
        self.fails(1, "client-token", "create", "--account", "acme", "--actor", str(uuid.uuid4()))

    def test_delete(self) -> None:
        """delete removes one row of the account; unknown ids exit 1 and change nothing."""
        self.account()
        site_id = self.ctl("site", "create", "--account", "acme", "--name", "HQ")[0]
        self.fails(1, "delete", "site", str(uuid.uuid4()), "--account", "acme")
        self.fails(1, "delete", "site", "not-an-id", "--account", "acme")
        self.ctl("delete", "site", site_id, "--account", "acme")
        self.assertEqual(self.ctl("list", "sites", "--account", "acme"), ["id\tname"])
        self.ctl("delete", "account", "acme")
        self.assertEqual(self.ctl("list", "accounts"), ["id\tslug\tname"])

    def test_other_account_ids_refused(self) -> None:
        """Ids of another account are unknown here: exit 1, nothing changed."""
        self.account()
        self.ctl("account", "create", "--slug", "beta", "--name", "Beta")
        beta_site = self.ctl("site", "create", "--account", "beta", "--name", "HQ")[0]
        self.ctl("site", "create", "--account", "acme", "--name", "HQ")
        self.fails(1, "delete", "site", beta_site, "--account", "acme")
        self.fails(1, "gateway-token", "create", "--account", "acme", "--site", beta_site)
        self.fails(1, "resource", "create", "--account", "acme", "--type", "ip",
                   "--address", "10.0.0.1", "--site", beta_site)

    def test_schema_too_new(self) -> None:
        """A database from a newer release is refused with one line, exit 1."""
        self.account()
        with sqlite3.connect(self.db) as connection:
            connection.execute("INSERT INTO schema_migrations VALUES (999, 0)")
        self.assertIn("newer", self.fails(1, "list", "accounts"))

    def test_database_option_and_environment(self) -> None:
        """--database and DATABASE_URL pick the file; FIREZONE_DATA_DIR the default dir."""
        other = os.path.abspath(os.path.join(self.mktemp(), "other.db"))
        out, err = io.StringIO(), io.StringIO()
        status = main(["account", "create", "--slug", "envy", "--name", "E"], stdout=out,
                      stderr=err, environ={"DATABASE_URL": "sqlite:///" + other,
                                           "FIREZONE_DATA_DIR": self.data_dir})
        self.assertEqual((status, err.getvalue()), (0, ""))
        self.assertTrue(os.path.exists(other))
        self.assertFalse(os.path.exists(self.db))
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, "secret_key")))

    def test_help(self) -> None:
        """--help prints usage and exits 0."""
        out = io.StringIO()
        self.assertEqual(main(["--help"], stdout=out, stderr=io.StringIO(), environ={}), 0)
