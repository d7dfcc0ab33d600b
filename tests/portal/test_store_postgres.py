"""The store contract on PostgreSQL (txpostgres), on a throwaway cluster.

These tests need the real reactor (txpostgres is asynchronous), so they use
``twisted.trial.unittest.TestCase`` and return Deferreds.  The store's *time*
still comes from a ``task.Clock``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psycopg2
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

import firezone
from firezone.portal.store import PortalStore, StoreError
from firezone.portal.store.postgres import PostgresStore
from tests.portal.pgcluster import shared_cluster, unavailable_reason
from tests.portal.store_contract import START, StoreContractMixin

_SKIP = unavailable_reason()


class PostgresStoreContractTests(StoreContractMixin, TestCase):
    """The contract suite on PostgreSQL 15; each test gets a fresh database."""

    if _SKIP is not None:
        skip = _SKIP
    timeout = 60

    def setUp(self) -> Deferred[None]:  # type: ignore[override]  # trial waits on it
        return Deferred.fromCoroutine(self._set_up())

    async def _set_up(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(START)
        self.dsn, self.store = await self._new_store()

    async def _new_store(self, **kw: Any) -> tuple[str, PostgresStore]:
        cluster = shared_cluster()
        dsn = cluster.create_database()
        self.addCleanup(cluster.drop_database, dsn)
        store = await PostgresStore.open(dsn, self.clock, reactor, pool_size=2, **kw)
        self.addCleanup(store.close)
        return dsn, store

    async def make_store(self, **kw: Any) -> PortalStore:
        return (await self._new_store(**kw))[1]

    async def reopen(self) -> PortalStore:
        store = await PostgresStore.open(self.dsn, self.clock, reactor, pool_size=1)
        self.addCleanup(store.close)
        return store

    async def force_schema_version(self, version: int) -> None:
        connection = psycopg2.connect(self.dsn)
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, 0)",
                    (version,),
                )
        finally:
            connection.close()

    async def eventually(self, predicate: Any) -> None:
        for _ in range(500):
            if predicate():
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(predicate())


class PostgresNotifyTests(TestCase):
    """LISTEN/NOTIFY crosses portal nodes sharing one database."""

    if _SKIP is not None:
        skip = _SKIP
    timeout = 60

    async def test_notification_reaches_other_node(self) -> None:
        """A token deleted through one node is heard by a listener on another."""
        cluster = shared_cluster()
        dsn = cluster.create_database()
        self.addCleanup(cluster.drop_database, dsn)
        clock = task.Clock()
        clock.advance(START)
        one = await PostgresStore.open(dsn, clock, reactor, pool_size=1)
        self.addCleanup(one.close)
        two = await PostgresStore.open(dsn, clock, reactor, pool_size=1)
        self.addCleanup(two.close)
        heard: list[str] = []
        await two.listen("token_deleted", heard.append)
        token = await one.create_token(None, "relay", secret_salt="s", secret_hash="h")
        await one.delete_token(None, token.id)
        for _ in range(500):
            if heard:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(heard, [token.id])

    def test_unreachable_database_fails(self) -> Deferred[Any]:
        """Opening a database nobody listens on fails instead of hanging."""
        clock = task.Clock()
        d: Deferred[Any] = Deferred.fromCoroutine(PostgresStore.open(
            "postgresql://postgres@127.0.0.1:1/none", clock, reactor, pool_size=1))
        return self.assertFailure(d, StoreError)


class PostgresCtlTests(TestCase):
    """firezone-ctl on PostgreSQL runs under task.react, so it runs in a child process."""

    if _SKIP is not None:
        skip = _SKIP
    timeout = 120

    def ctl(self, dsn: str, data_dir: str, *argv: str) -> subprocess.CompletedProcess[str]:
        root = os.path.dirname(os.path.dirname(os.path.abspath(firezone.__file__)))
        return subprocess.run(
            [sys.executable, "-c", "import sys; from firezone.portal.ctl import main; "
             "sys.exit(main())", "--database", dsn, "--data-dir", data_dir, *argv],
            capture_output=True, text=True, timeout=60, cwd=root,
            env={**os.environ, "PYTHONPATH": root},
        )

    def test_ctl_on_postgresql(self) -> None:
        """Commands succeed on PostgreSQL; a refused one exits 1 with one line."""
        cluster = shared_cluster()
        dsn = cluster.create_database()
        self.addCleanup(cluster.drop_database, dsn)
        data_dir = os.path.abspath(self.mktemp())
        created = self.ctl(dsn, data_dir, "account", "create", "--slug", "acme", "--name", "A")
        self.assertEqual((created.returncode, created.stderr), (0, ""))
        self.assertIn("ACCOUNT_SLUG=acme", created.stdout)
        site = self.ctl(dsn, data_dir, "site", "create", "--account", "acme", "--name", "HQ")
        self.assertEqual(site.returncode, 0, site.stderr)
        token = self.ctl(dsn, data_dir, "gateway-token", "create", "--account", "acme",
                         "--site", "HQ")
        self.assertEqual(token.returncode, 0, token.stderr)
        self.assertIn("FIREZONE_TOKEN=.SFMyNTY.", token.stdout)
        refused = self.ctl(dsn, data_dir, "resource", "create", "--account", "acme",
                           "--type", "cidr", "--address", "10.0.0.0/33", "--site", "HQ")
        self.assertEqual(refused.returncode, 1)
        self.assertEqual(refused.stderr.count("\n"), 1, refused.stderr)
        listed = self.ctl(dsn, data_dir, "list", "resources", "--account", "acme")
        self.assertEqual(listed.stdout.splitlines()[1:], [])
        unreachable = self.ctl("postgresql://postgres@127.0.0.1:1/none", data_dir,
                               "list", "accounts")
        self.assertEqual(unreachable.returncode, 1)
        self.assertEqual(unreachable.stderr.count("\n"), 1, unreachable.stderr)
