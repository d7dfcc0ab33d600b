"""Store operations as transaction programs, written once for both backends.

A *program* is a generator that yields :class:`Query` and :class:`Notify`
steps and receives each query's rows back (a list of ``dict``).  It holds all
the logic of an operation (scoping by account, validation, address probing)
and no I/O; a backend only drives it inside one database transaction:

* SQLite runs it synchronously and returns an already-fired Deferred;
* PostgreSQL runs it through txpostgres, one awaited query at a time.

If the program raises, the backend rolls back; notifications are delivered
only when the transaction commits (PostgreSQL does this by itself for
``NOTIFY``; the SQLite backend holds them until ``COMMIT``).

SQL here uses ``?`` placeholders and avoids ``%`` and literal ``?``; the
PostgreSQL backend rewrites ``?`` to ``%s``.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from twisted.internet.defer import Deferred

from firezone.portal.store.errors import InvalidRecord, NotFound

Row = dict[str, Any]
Rows = list[Row]

T = TypeVar("T")
P = ParamSpec("P")


@dataclass(frozen=True)
class Query:
    """One SQL statement; ``dialect`` restricts it to one backend (e.g. row locks)."""

    sql: str
    params: tuple[Any, ...] = ()
    dialect: str | None = None


@dataclass(frozen=True)
class Notify:
    """A notification to deliver on ``channel`` once the transaction commits."""

    channel: str
    payload: str


Step = Query | Notify
Program = Generator[Step, Rows, T]

#: channel carrying the id of every deleted token (the API disconnects its sockets)
TOKEN_DELETED = "token_deleted"
#: channel carrying ``{"op", "table", "account_id", "id"}`` JSON for every write
CHANGES = "changes"


class _Unchanged:
    """Sentinel for update methods: leave this column as it is (``None`` clears it)."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()

_CHANNEL = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")


def check_channel(channel: str) -> str:
    """Channel names are PostgreSQL identifiers; keep them to a safe subset."""
    if not _CHANNEL.match(channel):
        raise ValueError(f"invalid notification channel name {channel!r}")
    return channel


class Runner(Protocol):
    def _run(self, program: Program[T]) -> Deferred[T]: ...


S = TypeVar("S", bound=Runner)


def transaction(
    method: Callable[Concatenate[S, P], Program[T]],
) -> Callable[Concatenate[S, P], Deferred[T]]:
    """Turn a program-building method into one returning a Deferred result."""

    @functools.wraps(method)
    def run(self: S, *args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return self._run(method(self, *args, **kwargs))

    return run


def drive(program: Program[T], execute: Callable[[Step], Rows]) -> T:
    """Run ``program`` to completion with a synchronous ``execute``."""
    rows: Rows | None = None
    while True:
        try:
            step = program.send(rows) if rows is not None else next(program)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        rows = execute(step)


def new_id() -> str:
    return str(uuid.uuid4())


def check_id(kind: str, value: object) -> str:
    """A canonical UUID string; anything else names no row, so it is NotFound."""
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise NotFound(kind, str(value))


def optional_id(kind: str, value: object | None) -> str | None:
    return None if value is None else check_id(kind, value)


def check_choice(what: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidRecord(f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_text(what: str, value: object, *, max_len: int = 255, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidRecord(f"{what} must be text")
    value = value.strip()
    if not value and not empty:
        raise InvalidRecord(f"{what} must not be empty")
    if len(value) > max_len:
        raise InvalidRecord(f"{what} is longer than {max_len} characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidRecord(f"{what} must not contain control characters")
    return value


def optional_text(what: str, value: object | None, *, max_len: int = 255) -> str | None:
    if value is None:
        return None
    text = check_text(what, value, max_len=max_len, empty=True)
    return text or None


def check_ip(what: str, value: object | None) -> str | None:
    """An IP address in canonical text form (what PostgreSQL's ``inet`` prints)."""
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise InvalidRecord(f"{what} {value!r} is not an IP address")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def fetch_one(kind: str, ident: str, sql: str, params: tuple[Any, ...]) -> Program[Row]:
    rows = yield Query(sql, params)
    if not rows:
        raise NotFound(kind, ident)
    return rows[0]


def insert(table: str, values: dict[str, Any], *, account_id: str | None) -> Program[Row]:
    """Insert one row, announce it on :data:`CHANGES`, return it as stored."""
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    rows = yield Query(
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING *", tuple(values.values())
    )
    yield from changed("insert", table, account_id, values["id"])
    return rows[0]


def update(
    table: str, kind: str, account_id: str, ident: str, values: dict[str, Any]
) -> Program[Row]:
    """Update one account-scoped row by id; NotFound if the account has no such row."""
    assignments = ", ".join(f"{column} = ?" for column in values)
    rows = yield Query(
        f"UPDATE {table} SET {assignments} WHERE account_id = ? AND id = ? RETURNING *",
        (*values.values(), account_id, ident),
    )
    if not rows:
        raise NotFound(kind, ident)
    yield from changed("update", table, account_id, ident)
    return rows[0]


def delete(table: str, kind: str, account_id: str, ident: str) -> Program[None]:
    """Delete one account-scoped row by id; NotFound if the account has no such row."""
    rows = yield Query(
        f"DELETE FROM {table} WHERE account_id = ? AND id = ? RETURNING id", (account_id, ident)
    )
    if not rows:
        raise NotFound(kind, ident)
    yield from changed("delete", table, account_id, ident)


def changed(op: str, table: str, account_id: str | None, ident: str) -> Program[None]:
    yield Notify(
        CHANGES, dumps({"op": op, "table": table, "account_id": account_id, "id": ident})
    )
