"""State and helpers every group of store operations shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from firezone.portal.store.program import (
    TOKEN_DELETED,
    Notify,
    Program,
    Query,
    Row,
    T,
    changed,
    fetch_one,
)


class SupportsSeconds(Protocol):
    """The one thing the store needs from a clock (``IReactorTime.seconds``)."""

    def seconds(self) -> float: ...


class OpsBase:
    """Holds the injected clock and randomness; subclasses add ``_run``."""

    _clock: SupportsSeconds
    _randbelow: Callable[[int], int]
    _randbytes: Callable[[int], bytes]

    def _run(self, program: Program[T]) -> Deferred[T]:
        raise NotImplementedError

    def _now(self) -> float:
        return float(self._clock.seconds())

    def _fetch(self, table: str, kind: str, account_id: str, ident: str) -> Program[Row]:
        """One row of ``table`` that belongs to ``account_id``, else NotFound."""
        return fetch_one(
            kind, ident, f"SELECT * FROM {table} WHERE account_id = ? AND id = ?",
            (account_id, ident),
        )

    def _require_account(self, account_id: str) -> Program[Row]:
        return fetch_one(
            "account", account_id, "SELECT * FROM accounts WHERE id = ?", (account_id,)
        )

    def _delete_tokens(self, where: str, params: tuple[Any, ...]) -> Program[int]:
        """Delete the tokens matching ``where`` and announce each on ``token_deleted``.

        Used before deleting or disabling whatever the tokens hang off (actor,
        site, provider, account), so a cascade never removes a token silently
        and the API can always disconnect its sockets.
        """
        rows = yield Query(f"DELETE FROM tokens WHERE {where} RETURNING id, account_id", params)
        for row in rows:
            yield Notify(TOKEN_DELETED, str(row["id"]))
            yield from changed("delete", "tokens", row["account_id"], str(row["id"]))
        return len(rows)
