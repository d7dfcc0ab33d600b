"""The portal's store: one interface (``IPortalStore``), SQLite and PostgreSQL backends."""

from firezone.portal.store._base import SupportsSeconds
from firezone.portal.store.base import PortalStore
from firezone.portal.store.errors import (
    Conflict,
    InvalidRecord,
    NotFound,
    SchemaTooNew,
    StoreError,
)
from firezone.portal.store.interface import IPortalStore
from firezone.portal.store.program import CHANGES, TOKEN_DELETED, UNCHANGED
from firezone.portal.store.url import open_store, parse_database_url

__all__ = [
    "CHANGES",
    "TOKEN_DELETED",
    "UNCHANGED",
    "Conflict",
    "IPortalStore",
    "InvalidRecord",
    "NotFound",
    "PortalStore",
    "SchemaTooNew",
    "StoreError",
    "SupportsSeconds",
    "open_store",
    "parse_database_url",
]
