"""Token rows: only a salt and a salted hash are stored (see ``firezone.portal.tokens``)."""

from __future__ import annotations

from typing import Any

from firezone.portal.store._base import OpsBase
from firezone.portal.store.errors import InvalidRecord, NotFound
from firezone.portal.store.program import (
    Program,
    Query,
    changed,
    check_choice,
    check_id,
    check_ip,
    check_text,
    insert,
    new_id,
    optional_id,
    optional_text,
    transaction,
)
from firezone.portal.store.records import TOKEN_TYPES, Actor, AuthProvider, Token


def _scope(account_id: str | None) -> tuple[str, tuple[Any, ...]]:
    """Relay tokens (no account) are only reachable with ``account_id=None``."""
    if account_id is None:
        return "account_id IS NULL", ()
    return "account_id = ?", (check_id("account", account_id),)


class TokenOps(OpsBase):
    @transaction
    def create_token(
        self,
        account_id: str | None,
        type: str,
        *,
        secret_salt: str,
        secret_hash: str,
        actor_id: str | None = None,
        auth_provider_id: str | None = None,
        site_id: str | None = None,
        name: str | None = None,
        expires_at: float | None = None,
    ) -> Program[Token]:
        """Store a token's salt and hash; the caller builds the token around the new id.

        client: ``actor_id`` (enabled), optional ``auth_provider_id`` (enabled),
        ``expires_at`` required.  gateway: ``site_id``.  api: ``actor_id``.
        relay: no account and nothing else.
        """
        check_choice("token type", type, TOKEN_TYPES)
        if (type == "relay") != (account_id is None):
            raise InvalidRecord("relay tokens, and only they, belong to no account")
        account_id = optional_id("account", account_id)
        actor_id = optional_id("actor", actor_id)
        auth_provider_id = optional_id("auth provider", auth_provider_id)
        site_id = optional_id("site", site_id)
        now = self._now()
        if expires_at is not None:
            expires_at = float(expires_at)
            if expires_at <= now:
                raise InvalidRecord("the token would already be expired")
        wants = {
            "client": (True, True, False),
            "api": (True, False, False),
            "gateway": (False, False, True),
            "relay": (False, False, False),
        }[type]
        for (wanted, given, what) in zip(
            wants, (actor_id, auth_provider_id, site_id), ("an actor", "a provider", "a site"),
            strict=True,
        ):
            if given is not None and not wanted:
                raise InvalidRecord(f"a {type} token cannot have {what}")
        if type in ("client", "api") and actor_id is None:
            raise InvalidRecord(f"a {type} token needs an actor")
        if type == "client" and expires_at is None:
            raise InvalidRecord("a client token needs an expiry")
        if type == "gateway" and site_id is None:
            raise InvalidRecord("a gateway token needs a site")
        if account_id is not None:
            yield from self._require_account(account_id)
            if actor_id is not None:
                actor = Actor.from_row(
                    (yield from self._fetch("actors", "actor", account_id, actor_id))
                )
                if actor.disabled:
                    raise InvalidRecord("the actor is disabled")
            if auth_provider_id is not None:
                provider = AuthProvider.from_row(
                    (yield from self._fetch("auth_providers", "auth provider", account_id,
                                            auth_provider_id))
                )
                if provider.disabled:
                    raise InvalidRecord("the auth provider is disabled")
            if site_id is not None:
                yield from self._fetch("sites", "site", account_id, site_id)
        row = yield from insert(
            "tokens",
            {"id": new_id(), "account_id": account_id, "type": type, "actor_id": actor_id,
             "auth_provider_id": auth_provider_id, "site_id": site_id,
             "name": optional_text("token name", name),
             "secret_salt": check_text("secret salt", secret_salt),
             "secret_hash": check_text("secret hash", secret_hash),
             "expires_at": expires_at, "last_used_at": None, "last_used_remote_ip": None,
             "inserted_at": now},
            account_id=account_id,
        )
        return Token.from_row(row)

    @transaction
    def get_token(self, account_id: str | None, token_id: str) -> Program[Token]:
        """A token of ``account_id``; ``None`` reaches relay tokens only."""
        where, params = _scope(account_id)
        token_id = check_id("token", token_id)
        rows = yield Query(f"SELECT * FROM tokens WHERE {where} AND id = ?", (*params, token_id))
        if not rows:
            raise NotFound("token", token_id)
        return Token.from_row(rows[0])

    @transaction
    def list_tokens(self, account_id: str | None, type: str | None = None) -> Program[list[Token]]:
        where, params = _scope(account_id)
        if type is not None:
            where, params = where + " AND type = ?", (*params, check_choice("type", type,
                                                                            TOKEN_TYPES))
        rows = yield Query(f"SELECT * FROM tokens WHERE {where} ORDER BY inserted_at, id", params)
        return [Token.from_row(r) for r in rows]

    @transaction
    def mark_token_used(
        self, account_id: str | None, token_id: str, remote_ip: str | None = None
    ) -> Program[Token]:
        where, params = _scope(account_id)
        token_id = check_id("token", token_id)
        rows = yield Query(
            f"UPDATE tokens SET last_used_at = ?, last_used_remote_ip = ?"
            f" WHERE {where} AND id = ? RETURNING *",
            (self._now(), check_ip("remote ip", remote_ip), *params, token_id),
        )
        if not rows:
            raise NotFound("token", token_id)
        yield from changed("update", "tokens", account_id, token_id)
        return Token.from_row(rows[0])

    @transaction
    def delete_token(self, account_id: str | None, token_id: str) -> Program[None]:
        """Delete one token; announced on ``token_deleted`` so its sockets can be closed."""
        where, params = _scope(account_id)
        token_id = check_id("token", token_id)
        deleted = yield from self._delete_tokens(f"{where} AND id = ?", (*params, token_id))
        if not deleted:
            raise NotFound("token", token_id)

    @transaction
    def delete_expired_tokens(self) -> Program[int]:
        """The periodic sweep of expired client and API tokens; returns the count."""
        count = yield from self._delete_tokens(
            "expires_at IS NOT NULL AND expires_at <= ?", (self._now(),)
        )
        return count
