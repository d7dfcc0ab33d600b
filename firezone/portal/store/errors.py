"""The errors a store reports, the same for every backend.

Callers (the API, the admin UI, ``firezone-ctl``) turn these into replies; they
never see ``sqlite3`` or ``psycopg2`` exceptions.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store reports on purpose."""


class NotFound(StoreError):
    """No row of this kind with this id exists *in this account*.

    A row that exists in another account is reported exactly like a missing
    one, so ids leak nothing across accounts.
    """

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"no {kind} with id {ident!r}")
        self.kind = kind
        self.ident = ident


class Conflict(StoreError):
    """The write would break a uniqueness rule (slug taken, duplicate policy, ...)."""


class InvalidRecord(StoreError, ValueError):
    """The values given for a write are malformed or inconsistent."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer release than this one.

    Opening it anyway could corrupt data written by the newer code, so the
    store refuses.
    """

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"database schema version {found} is newer than this release knows "
            f"(latest known: {known}); upgrade firezone before opening it"
        )
        self.found = found
        self.known = known
