"""Open a store from a database URL: ``sqlite:///path`` or ``postgresql://...``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.defer import Deferred

from firezone.portal.store._base import SupportsSeconds
from firezone.portal.store.base import PortalStore

SQLITE_PREFIX = "sqlite:///"
DATABASE_FILENAME = "portal.db"


class BadDatabaseURL(ValueError):
    """The URL names no database this release can open."""


@dataclass(frozen=True)
class DatabaseURL:
    """``kind`` is ``sqlite`` (``target`` a file path or ``:memory:``) or ``postgresql``
    (``target`` the libpq URI)."""

    kind: str
    target: str


def parse_database_url(url: str) -> DatabaseURL:
    """SQLAlchemy-style: ``sqlite:///rel.db`` is relative, ``sqlite:////abs.db`` absolute."""
    url = url.strip()
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        if not url.startswith(SQLITE_PREFIX) or len(url) == len(SQLITE_PREFIX):
            raise BadDatabaseURL(f"{url!r}: expected sqlite:///PATH")
        return DatabaseURL("sqlite", url[len(SQLITE_PREFIX):])
    if scheme in ("postgresql", "postgres"):
        return DatabaseURL("postgresql", url)
    raise BadDatabaseURL(f"{url!r} is not a sqlite:/// or postgresql:// URL")


def default_database_url(data_dir: str) -> str:
    return SQLITE_PREFIX + os.path.join(os.path.abspath(data_dir), DATABASE_FILENAME)


def open_store(
    url: str, clock: SupportsSeconds, reactor: Any = None, **kw: Any
) -> Deferred[PortalStore]:
    """Open and migrate the store named by ``url`` (fails with SchemaTooNew if too new)."""
    try:
        parsed = parse_database_url(url)
    except BadDatabaseURL:
        return defer.fail()
    if parsed.kind == "sqlite":
        from firezone.portal.store.sqlite import SQLiteStore

        try:
            store: PortalStore = SQLiteStore.open(parsed.target, clock, **kw)
        except Exception:
            return defer.fail()
        return defer.succeed(store)
    from firezone.portal.store.postgres import PostgresStore

    d: Deferred[PortalStore] = Deferred.fromCoroutine(
        PostgresStore.open(parsed.target, clock, reactor, **kw)
    )
    return d
