"""A throwaway PostgreSQL 15 cluster for the store tests (MACHINE.md).

``initdb`` refuses root, so the cluster runs as the ``postgres`` user in a
fresh temporary directory on a free loopback port, with ``fsync=off``.  Trial
has no per-class fixtures, so one cluster per test process is started on first
use and stopped and removed at interpreter exit (also when tests fail); each
test gets its own database.
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import psycopg2

PG_BIN = "/usr/lib/postgresql/15/bin"
PG_USER = "postgres"


def unavailable_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None if they can."""
    if not os.path.exists(os.path.join(PG_BIN, "initdb")):
        return f"PostgreSQL 15 binaries not installed in {PG_BIN} (apt-get install postgresql)"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the throwaway PostgreSQL cluster needs root (to run initdb as postgres)"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no {PG_USER!r} system user"
    if shutil.which("runuser") is None:
        return "runuser is missing"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_postgres(*argv: str) -> None:
    subprocess.run(
        ["runuser", "-u", PG_USER, "--", *argv],
        check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, timeout=120,
    )


class ThrowawayCluster:
    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="fz-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.running = False
        self._names = itertools.count(1)

    def start(self) -> None:
        entry = pwd.getpwnam(PG_USER)
        os.chown(self.root, entry.pw_uid, entry.pw_gid)
        try:
            _as_postgres(f"{PG_BIN}/initdb", "-D", self.data, "--auth=trust", "-U", PG_USER,
                         "--no-sync")
            _as_postgres(
                f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", os.path.join(self.root, "log"),
                "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
                      " -c fsync=off -c full_page_writes=off",
                "-w", "start",
            )
            self.running = True
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.running:
            self.running = False
            try:
                _as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def _admin(self, sql: str) -> None:
        connection = psycopg2.connect(self.dsn())
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()

    def create_database(self) -> str:
        """A new empty database; returns its DSN."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_cluster: ThrowawayCluster | None = None


def shared_cluster() -> ThrowawayCluster:
    """The process's cluster, started on first use, removed at exit."""
    global _cluster
    if _cluster is None:
        cluster = ThrowawayCluster()
        atexit.register(cluster.stop)
        cluster.start()
        _cluster = cluster
    return _cluster
