"""Accounts and who is in them: actors, auth providers, identities, groups, memberships."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from firezone.portal.store import validate
from firezone.portal.store._base import OpsBase
from firezone.portal.store.errors import Conflict, InvalidRecord, NotFound
from firezone.portal.store.program import (
    Program,
    Query,
    changed,
    check_choice,
    check_id,
    check_text,
    delete,
    dumps,
    fetch_one,
    insert,
    new_id,
    optional_id,
    transaction,
    update,
)
from firezone.portal.store.records import (
    ACTOR_TYPES,
    AUTH_PROVIDER_TYPES,
    EVERYONE_GROUP_NAME,
    Account,
    AccountConfig,
    Actor,
    AuthProvider,
    CreatedAccount,
    Group,
    Identity,
    Membership,
)


class AccountOps(OpsBase):
    # -- accounts -----------------------------------------------------------------------

    @transaction
    def create_account(
        self,
        slug: str,
        name: str,
        config: AccountConfig | None = None,
        admin_email: str | None = None,
        admin_name: str | None = None,
    ) -> Program[CreatedAccount]:
        slug = validate.slug(slug)
        name = check_text("account name", name, max_len=64)
        config_json = validate.account_config(config or AccountConfig())
        admin_email = validate.optional_email(admin_email)
        if admin_name is not None and admin_email is None:
            raise InvalidRecord("an admin name needs an admin email")
        now = self._now()
        taken = yield Query("SELECT id FROM accounts WHERE slug = ?", (slug,))
        if taken:
            raise Conflict(f"an account with slug {slug!r} already exists")
        account_id = new_id()
        account = yield from insert(
            "accounts",
            {"id": account_id, "slug": slug, "name": name, "config": dumps(config_json),
             "inserted_at": now, "updated_at": now},
            account_id=account_id,
        )
        everyone = yield from insert(
            "groups",
            {"account_id": account_id, "id": new_id(), "name": EVERYONE_GROUP_NAME,
             "type": "managed", "inserted_at": now, "updated_at": now},
            account_id=account_id,
        )
        provider = yield from insert(
            "auth_providers",
            {"account_id": account_id, "id": new_id(), "type": "email_otp", "name": "Email",
             "config": dumps({}), "disabled_at": None, "inserted_at": now, "updated_at": now},
            account_id=account_id,
        )
        admin = identity = None
        if admin_email is not None:
            admin_row = yield from insert(
                "actors",
                {"account_id": account_id, "id": new_id(), "type": "account_admin_user",
                 "name": check_text("admin name", admin_name or admin_email, max_len=255),
                 "email": admin_email, "disabled_at": None, "inserted_at": now,
                 "updated_at": now},
                account_id=account_id,
            )
            admin = Actor.from_row(admin_row)
            identity_row = yield from insert(
                "identities",
                {"account_id": account_id, "id": new_id(), "actor_id": admin.id,
                 "provider_id": provider["id"], "provider_identifier": admin_email,
                 "email": admin_email, "inserted_at": now},
                account_id=account_id,
            )
            identity = Identity.from_row(identity_row)
        return CreatedAccount(
            account=Account.from_row(account),
            everyone_group=Group.from_row(everyone),
            email_provider=AuthProvider.from_row(provider),
            admin=admin,
            admin_identity=identity,
        )

    @transaction
    def get_account(self, account_id: str) -> Program[Account]:
        account_id = check_id("account", account_id)
        row = yield from self._require_account(account_id)
        return Account.from_row(row)

    @transaction
    def get_account_by_slug(self, slug: str) -> Program[Account]:
        row = yield from fetch_one(
            "account", slug, "SELECT * FROM accounts WHERE slug = ?", (str(slug),)
        )
        return Account.from_row(row)

    @transaction
    def list_accounts(self) -> Program[list[Account]]:
        rows = yield Query("SELECT * FROM accounts ORDER BY inserted_at, id")
        return [Account.from_row(r) for r in rows]

    @transaction
    def update_account(
        self, account_id: str, name: str | None = None, config: AccountConfig | None = None
    ) -> Program[Account]:
        account_id = check_id("account", account_id)
        values: dict[str, Any] = {"updated_at": self._now()}
        if name is not None:
            values["name"] = check_text("account name", name, max_len=64)
        if config is not None:
            values["config"] = dumps(validate.account_config(config))
        rows = yield Query(
            "UPDATE accounts SET " + ", ".join(f"{c} = ?" for c in values)
            + " WHERE id = ? RETURNING *",
            (*values.values(), account_id),
        )
        if not rows:
            raise NotFound("account", account_id)
        yield from changed("update", "accounts", account_id, account_id)
        return Account.from_row(rows[0])

    @transaction
    def delete_account(self, account_id: str) -> Program[None]:
        account_id = check_id("account", account_id)
        yield from self._require_account(account_id)
        yield from self._delete_tokens("account_id = ?", (account_id,))
        yield Query("DELETE FROM accounts WHERE id = ?", (account_id,))
        yield from changed("delete", "accounts", account_id, account_id)

    # -- actors -------------------------------------------------------------------------

    @transaction
    def create_actor(
        self, account_id: str, type: str, name: str, email: str | None = None
    ) -> Program[Actor]:
        account_id = check_id("account", account_id)
        check_choice("actor type", type, ACTOR_TYPES)
        name = check_text("actor name", name)
        email = validate.optional_email(email)
        yield from self._require_account(account_id)
        if email is not None:
            taken = yield Query(
                "SELECT id FROM actors WHERE account_id = ? AND email = ?", (account_id, email)
            )
            if taken:
                raise Conflict(f"an actor with email {email!r} already exists in this account")
        now = self._now()
        row = yield from insert(
            "actors",
            {"account_id": account_id, "id": new_id(), "type": type, "name": name,
             "email": email, "disabled_at": None, "inserted_at": now, "updated_at": now},
            account_id=account_id,
        )
        return Actor.from_row(row)

    @transaction
    def get_actor(self, account_id: str, actor_id: str) -> Program[Actor]:
        account_id, actor_id = check_id("account", account_id), check_id("actor", actor_id)
        row = yield from self._fetch("actors", "actor", account_id, actor_id)
        return Actor.from_row(row)

    @transaction
    def list_actors(self, account_id: str) -> Program[list[Actor]]:
        account_id = check_id("account", account_id)
        rows = yield Query(
            "SELECT * FROM actors WHERE account_id = ? ORDER BY inserted_at, id", (account_id,)
        )
        return [Actor.from_row(r) for r in rows]

    @transaction
    def set_actor_disabled(
        self, account_id: str, actor_id: str, disabled: bool
    ) -> Program[Actor]:
        """Disabling an actor also deletes its client and API tokens (signs it out)."""
        account_id, actor_id = check_id("account", account_id), check_id("actor", actor_id)
        current = Actor.from_row((yield from self._fetch("actors", "actor", account_id, actor_id)))
        if current.disabled == disabled:
            return current
        now = self._now()
        if disabled:
            yield from self._delete_tokens(
                "account_id = ? AND actor_id = ?", (account_id, actor_id)
            )
        row = yield from update(
            "actors", "actor", account_id, actor_id,
            {"disabled_at": now if disabled else None, "updated_at": now},
        )
        return Actor.from_row(row)

    @transaction
    def delete_actor(self, account_id: str, actor_id: str) -> Program[None]:
        account_id, actor_id = check_id("account", account_id), check_id("actor", actor_id)
        yield from self._fetch("actors", "actor", account_id, actor_id)
        yield from self._delete_tokens("account_id = ? AND actor_id = ?", (account_id, actor_id))
        yield from delete("actors", "actor", account_id, actor_id)

    # -- auth providers -----------------------------------------------------------------

    @transaction
    def create_auth_provider(
        self, account_id: str, type: str, name: str, config: Mapping[str, Any] | None = None
    ) -> Program[AuthProvider]:
        account_id = check_id("account", account_id)
        check_choice("auth provider type", type, AUTH_PROVIDER_TYPES)
        name = check_text("auth provider name", name)
        config_json = validate.provider_config(config or {})
        yield from self._require_account(account_id)
        now = self._now()
        row = yield from insert(
            "auth_providers",
            {"account_id": account_id, "id": new_id(), "type": type, "name": name,
             "config": dumps(config_json), "disabled_at": None, "inserted_at": now,
             "updated_at": now},
            account_id=account_id,
        )
        return AuthProvider.from_row(row)

    @transaction
    def get_auth_provider(self, account_id: str, provider_id: str) -> Program[AuthProvider]:
        account_id = check_id("account", account_id)
        provider_id = check_id("auth provider", provider_id)
        row = yield from self._fetch("auth_providers", "auth provider", account_id, provider_id)
        return AuthProvider.from_row(row)

    @transaction
    def list_auth_providers(self, account_id: str) -> Program[list[AuthProvider]]:
        account_id = check_id("account", account_id)
        rows = yield Query(
            "SELECT * FROM auth_providers WHERE account_id = ? ORDER BY inserted_at, id",
            (account_id,),
        )
        return [AuthProvider.from_row(r) for r in rows]

    @transaction
    def update_auth_provider(
        self,
        account_id: str,
        provider_id: str,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Program[AuthProvider]:
        account_id = check_id("account", account_id)
        provider_id = check_id("auth provider", provider_id)
        values: dict[str, Any] = {"updated_at": self._now()}
        if name is not None:
            values["name"] = check_text("auth provider name", name)
        if config is not None:
            values["config"] = dumps(validate.provider_config(config))
        row = yield from update("auth_providers", "auth provider", account_id, provider_id, values)
        return AuthProvider.from_row(row)

    @transaction
    def set_auth_provider_disabled(
        self, account_id: str, provider_id: str, disabled: bool
    ) -> Program[AuthProvider]:
        """Disabling a provider deletes the client tokens it issued."""
        account_id = check_id("account", account_id)
        provider_id = check_id("auth provider", provider_id)
        row = yield from self._fetch("auth_providers", "auth provider", account_id, provider_id)
        current = AuthProvider.from_row(row)
        if current.disabled == disabled:
            return current
        now = self._now()
        if disabled:
            yield from self._delete_tokens(
                "account_id = ? AND auth_provider_id = ?", (account_id, provider_id)
            )
        row = yield from update(
            "auth_providers", "auth provider", account_id, provider_id,
            {"disabled_at": now if disabled else None, "updated_at": now},
        )
        return AuthProvider.from_row(row)

    @transaction
    def delete_auth_provider(self, account_id: str, provider_id: str) -> Program[None]:
        account_id = check_id("account", account_id)
        provider_id = check_id("auth provider", provider_id)
        yield from self._fetch("auth_providers", "auth provider", account_id, provider_id)
        yield from self._delete_tokens(
            "account_id = ? AND auth_provider_id = ?", (account_id, provider_id)
        )
        yield from delete("auth_providers", "auth provider", account_id, provider_id)

    # -- identities ---------------------------------------------------------------------

    @transaction
    def create_identity(
        self,
        account_id: str,
        actor_id: str,
        provider_id: str,
        provider_identifier: str,
        email: str | None = None,
    ) -> Program[Identity]:
        account_id, actor_id = check_id("account", account_id), check_id("actor", actor_id)
        provider_id = check_id("auth provider", provider_id)
        provider_identifier = check_text("provider identifier", provider_identifier)
        email = validate.optional_email(email)
        yield from self._fetch("actors", "actor", account_id, actor_id)
        yield from self._fetch("auth_providers", "auth provider", account_id, provider_id)
        taken = yield Query(
            "SELECT id FROM identities WHERE account_id = ? AND provider_id = ?"
            " AND provider_identifier = ?",
            (account_id, provider_id, provider_identifier),
        )
        if taken:
            raise Conflict(f"identity {provider_identifier!r} already exists for this provider")
        row = yield from insert(
            "identities",
            {"account_id": account_id, "id": new_id(), "actor_id": actor_id,
             "provider_id": provider_id, "provider_identifier": provider_identifier,
             "email": email, "inserted_at": self._now()},
            account_id=account_id,
        )
        return Identity.from_row(row)

    @transaction
    def get_identity(self, account_id: str, identity_id: str) -> Program[Identity]:
        account_id = check_id("account", account_id)
        identity_id = check_id("identity", identity_id)
        row = yield from self._fetch("identities", "identity", account_id, identity_id)
        return Identity.from_row(row)

    @transaction
    def find_identity(
        self, account_id: str, provider_id: str, provider_identifier: str
    ) -> Program[Identity]:
        account_id = check_id("account", account_id)
        provider_id = check_id("auth provider", provider_id)
        row = yield from fetch_one(
            "identity", str(provider_identifier),
            "SELECT * FROM identities WHERE account_id = ? AND provider_id = ?"
            " AND provider_identifier = ?",
            (account_id, provider_id, str(provider_identifier)),
        )
        return Identity.from_row(row)

    @transaction
    def list_identities(
        self, account_id: str, actor_id: str | None = None
    ) -> Program[list[Identity]]:
        account_id = check_id("account", account_id)
        actor_id = optional_id("actor", actor_id)
        sql = "SELECT * FROM identities WHERE account_id = ?"
        params: tuple[Any, ...] = (account_id,)
        if actor_id is not None:
            sql, params = sql + " AND actor_id = ?", (account_id, actor_id)
        rows = yield Query(sql + " ORDER BY inserted_at, id", params)
        return [Identity.from_row(r) for r in rows]

    @transaction
    def delete_identity(self, account_id: str, identity_id: str) -> Program[None]:
        account_id = check_id("account", account_id)
        identity_id = check_id("identity", identity_id)
        yield from delete("identities", "identity", account_id, identity_id)

    # -- groups and memberships ---------------------------------------------------------

    @transaction
    def create_group(self, account_id: str, name: str) -> Program[Group]:
        """Create a static group; the managed Everyone group comes with the account."""
        account_id = check_id("account", account_id)
        name = check_text("group name", name, max_len=64)
        yield from self._require_account(account_id)
        now = self._now()
        row = yield from insert(
            "groups",
            {"account_id": account_id, "id": new_id(), "name": name, "type": "static",
             "inserted_at": now, "updated_at": now},
            account_id=account_id,
        )
        return Group.from_row(row)

    @transaction
    def get_group(self, account_id: str, group_id: str) -> Program[Group]:
        account_id, group_id = check_id("account", account_id), check_id("group", group_id)
        row = yield from self._fetch("groups", "group", account_id, group_id)
        return Group.from_row(row)

    @transaction
    def list_groups(self, account_id: str) -> Program[list[Group]]:
        account_id = check_id("account", account_id)
        rows = yield Query(
            "SELECT * FROM groups WHERE account_id = ? ORDER BY inserted_at, id", (account_id,)
        )
        return [Group.from_row(r) for r in rows]

    @transaction
    def delete_group(self, account_id: str, group_id: str) -> Program[None]:
        account_id, group_id = check_id("account", account_id), check_id("group", group_id)
        group = Group.from_row((yield from self._fetch("groups", "group", account_id, group_id)))
        if group.managed:
            raise InvalidRecord(f"the managed group {group.name!r} cannot be deleted")
        yield from delete("groups", "group", account_id, group_id)

    @transaction
    def add_membership(self, account_id: str, group_id: str, actor_id: str) -> Program[Membership]:
        account_id, group_id = check_id("account", account_id), check_id("group", group_id)
        actor_id = check_id("actor", actor_id)
        group = Group.from_row((yield from self._fetch("groups", "group", account_id, group_id)))
        if group.managed:
            raise InvalidRecord(
                f"membership of the managed group {group.name!r} is implicit and cannot be added"
            )
        yield from self._fetch("actors", "actor", account_id, actor_id)
        taken = yield Query(
            "SELECT id FROM memberships WHERE account_id = ? AND group_id = ? AND actor_id = ?",
            (account_id, group_id, actor_id),
        )
        if taken:
            raise Conflict("the actor is already a member of this group")
        row = yield from insert(
            "memberships",
            {"account_id": account_id, "id": new_id(), "group_id": group_id,
             "actor_id": actor_id, "inserted_at": self._now()},
            account_id=account_id,
        )
        return Membership.from_row(row)

    @transaction
    def get_membership(self, account_id: str, membership_id: str) -> Program[Membership]:
        account_id = check_id("account", account_id)
        membership_id = check_id("membership", membership_id)
        row = yield from self._fetch("memberships", "membership", account_id, membership_id)
        return Membership.from_row(row)

    @transaction
    def list_memberships(
        self, account_id: str, group_id: str | None = None, actor_id: str | None = None
    ) -> Program[list[Membership]]:
        """Stored (explicit) memberships; Everyone's implicit ones are not rows."""
        account_id = check_id("account", account_id)
        group_id = optional_id("group", group_id)
        actor_id = optional_id("actor", actor_id)
        sql = "SELECT * FROM memberships WHERE account_id = ?"
        params: tuple[Any, ...] = (account_id,)
        if group_id is not None:
            sql, params = sql + " AND group_id = ?", (*params, group_id)
        if actor_id is not None:
            sql, params = sql + " AND actor_id = ?", (*params, actor_id)
        rows = yield Query(sql + " ORDER BY inserted_at, id", params)
        return [Membership.from_row(r) for r in rows]

    @transaction
    def delete_membership(self, account_id: str, membership_id: str) -> Program[None]:
        account_id = check_id("account", account_id)
        membership_id = check_id("membership", membership_id)
        yield from delete("memberships", "membership", account_id, membership_id)
