"""What can be reached and by whom: sites, resources and policies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from firezone.portal.store import validate
from firezone.portal.store._base import OpsBase
from firezone.portal.store.errors import Conflict
from firezone.portal.store.program import (
    UNCHANGED,
    Program,
    Query,
    check_choice,
    check_id,
    check_text,
    delete,
    dumps,
    insert,
    new_id,
    optional_id,
    optional_text,
    transaction,
    update,
)
from firezone.portal.store.records import (
    RESOURCE_TYPES,
    Actor,
    Policy,
    PolicyGrant,
    Resource,
    Site,
)


class NetworkOps(OpsBase):
    # -- sites --------------------------------------------------------------------------

    @transaction
    def create_site(self, account_id: str, name: str) -> Program[Site]:
        account_id = check_id("account", account_id)
        name = check_text("site name", name, max_len=64)
        yield from self._require_account(account_id)
        taken = yield Query(
            "SELECT id FROM sites WHERE account_id = ? AND name = ?", (account_id, name)
        )
        if taken:
            raise Conflict(f"a site named {name!r} already exists in this account")
        now = self._now()
        row = yield from insert(
            "sites",
            {"account_id": account_id, "id": new_id(), "name": name, "inserted_at": now,
             "updated_at": now},
            account_id=account_id,
        )
        return Site.from_row(row)

    @transaction
    def get_site(self, account_id: str, site_id: str) -> Program[Site]:
        account_id, site_id = check_id("account", account_id), check_id("site", site_id)
        row = yield from self._fetch("sites", "site", account_id, site_id)
        return Site.from_row(row)

    @transaction
    def list_sites(self, account_id: str) -> Program[list[Site]]:
        account_id = check_id("account", account_id)
        rows = yield Query(
            "SELECT * FROM sites WHERE account_id = ? ORDER BY inserted_at, id", (account_id,)
        )
        return [Site.from_row(r) for r in rows]

    @transaction
    def delete_site(self, account_id: str, site_id: str) -> Program[None]:
        """Deletes the site's resources, gateways and gateway tokens with it."""
        account_id, site_id = check_id("account", account_id), check_id("site", site_id)
        yield from self._fetch("sites", "site", account_id, site_id)
        yield from self._delete_tokens("account_id = ? AND site_id = ?", (account_id, site_id))
        yield from delete("sites", "site", account_id, site_id)

    # -- resources ----------------------------------------------------------------------

    @transaction
    def create_resource(
        self,
        account_id: str,
        type: str,
        address: str | None,
        name: str,
        site_id: str,
        address_description: str | None = None,
        ip_stack: str | None = None,
        filters: Iterable[Mapping[str, Any]] = (),
    ) -> Program[Resource]:
        account_id, site_id = check_id("account", account_id), check_id("site", site_id)
        check_choice("resource type", type, RESOURCE_TYPES)
        address, ip_stack = validate.resource_address(type, address, ip_stack)
        values = {
            "name": check_text("resource name", name),
            "address_description": optional_text("address description", address_description),
            "filters": dumps(validate.filters(filters)),
        }
        yield from self._fetch("sites", "site", account_id, site_id)
        if type == "internet":
            taken = yield Query(
                "SELECT id FROM resources WHERE account_id = ? AND type = 'internet'",
                (account_id,),
            )
            if taken:
                raise Conflict("this account already has an internet resource")
        now = self._now()
        row = yield from insert(
            "resources",
            {"account_id": account_id, "id": new_id(), "site_id": site_id, "type": type,
             "address": address, "ip_stack": ip_stack, **values, "inserted_at": now,
             "updated_at": now},
            account_id=account_id,
        )
        return Resource.from_row(row)

    @transaction
    def get_resource(self, account_id: str, resource_id: str) -> Program[Resource]:
        account_id = check_id("account", account_id)
        resource_id = check_id("resource", resource_id)
        row = yield from self._fetch("resources", "resource", account_id, resource_id)
        return Resource.from_row(row)

    @transaction
    def list_resources(
        self, account_id: str, site_id: str | None = None
    ) -> Program[list[Resource]]:
        account_id = check_id("account", account_id)
        site_id = optional_id("site", site_id)
        sql = "SELECT * FROM resources WHERE account_id = ?"
        params: tuple[Any, ...] = (account_id,)
        if site_id is not None:
            sql, params = sql + " AND site_id = ?", (account_id, site_id)
        rows = yield Query(sql + " ORDER BY inserted_at, id", params)
        return [Resource.from_row(r) for r in rows]

    @transaction
    def update_resource(
        self,
        account_id: str,
        resource_id: str,
        *,
        name: str = UNCHANGED,
        address: str | None = UNCHANGED,
        address_description: str | None = UNCHANGED,
        ip_stack: str | None = UNCHANGED,
        filters: Iterable[Mapping[str, Any]] = UNCHANGED,
        site_id: str = UNCHANGED,
    ) -> Program[Resource]:
        """Change the given fields; the type of a resource never changes."""
        account_id = check_id("account", account_id)
        resource_id = check_id("resource", resource_id)
        row = yield from self._fetch("resources", "resource", account_id, resource_id)
        current = Resource.from_row(row)
        values: dict[str, Any] = {"updated_at": self._now()}
        if name is not UNCHANGED:
            values["name"] = check_text("resource name", name)
        if address is not UNCHANGED or ip_stack is not UNCHANGED:
            new_address = current.address if address is UNCHANGED else address
            new_stack = current.ip_stack if ip_stack is UNCHANGED else ip_stack
            values["address"], values["ip_stack"] = validate.resource_address(
                current.type, new_address, new_stack
            )
        if address_description is not UNCHANGED:
            values["address_description"] = optional_text(
                "address description", address_description
            )
        if filters is not UNCHANGED:
            values["filters"] = dumps(validate.filters(filters))
        if site_id is not UNCHANGED:
            values["site_id"] = check_id("site", site_id)
            yield from self._fetch("sites", "site", account_id, values["site_id"])
        row = yield from update("resources", "resource", account_id, resource_id, values)
        return Resource.from_row(row)

    @transaction
    def delete_resource(self, account_id: str, resource_id: str) -> Program[None]:
        """Deletes the resource's policies and authorizations with it."""
        account_id = check_id("account", account_id)
        resource_id = check_id("resource", resource_id)
        yield from delete("resources", "resource", account_id, resource_id)

    # -- policies -----------------------------------------------------------------------

    @transaction
    def create_policy(
        self,
        account_id: str,
        group_id: str,
        resource_id: str,
        conditions: Iterable[Mapping[str, Any]] = (),
        description: str | None = None,
    ) -> Program[Policy]:
        account_id, group_id = check_id("account", account_id), check_id("group", group_id)
        resource_id = check_id("resource", resource_id)
        conditions_json = validate.conditions(conditions)
        description = optional_text("policy description", description, max_len=1024)
        yield from self._fetch("groups", "group", account_id, group_id)
        yield from self._fetch("resources", "resource", account_id, resource_id)
        taken = yield Query(
            "SELECT id FROM policies WHERE account_id = ? AND group_id = ? AND resource_id = ?",
            (account_id, group_id, resource_id),
        )
        if taken:
            raise Conflict("a policy for this group and resource already exists")
        now = self._now()
        row = yield from insert(
            "policies",
            {"account_id": account_id, "id": new_id(), "group_id": group_id,
             "resource_id": resource_id, "conditions": dumps(conditions_json),
             "description": description, "disabled_at": None, "inserted_at": now,
             "updated_at": now},
            account_id=account_id,
        )
        return Policy.from_row(row)

    @transaction
    def get_policy(self, account_id: str, policy_id: str) -> Program[Policy]:
        account_id, policy_id = check_id("account", account_id), check_id("policy", policy_id)
        row = yield from self._fetch("policies", "policy", account_id, policy_id)
        return Policy.from_row(row)

    @transaction
    def list_policies(
        self, account_id: str, group_id: str | None = None, resource_id: str | None = None
    ) -> Program[list[Policy]]:
        account_id = check_id("account", account_id)
        group_id = optional_id("group", group_id)
        resource_id = optional_id("resource", resource_id)
        sql = "SELECT * FROM policies WHERE account_id = ?"
        params: tuple[Any, ...] = (account_id,)
        if group_id is not None:
            sql, params = sql + " AND group_id = ?", (*params, group_id)
        if resource_id is not None:
            sql, params = sql + " AND resource_id = ?", (*params, resource_id)
        rows = yield Query(sql + " ORDER BY inserted_at, id", params)
        return [Policy.from_row(r) for r in rows]

    @transaction
    def update_policy(
        self,
        account_id: str,
        policy_id: str,
        *,
        conditions: Iterable[Mapping[str, Any]] = UNCHANGED,
        description: str | None = UNCHANGED,
    ) -> Program[Policy]:
        account_id, policy_id = check_id("account", account_id), check_id("policy", policy_id)
        values: dict[str, Any] = {"updated_at": self._now()}
        if conditions is not UNCHANGED:
            values["conditions"] = dumps(validate.conditions(conditions))
        if description is not UNCHANGED:
            values["description"] = optional_text("policy description", description, max_len=1024)
        row = yield from update("policies", "policy", account_id, policy_id, values)
        return Policy.from_row(row)

    @transaction
    def set_policy_disabled(
        self, account_id: str, policy_id: str, disabled: bool
    ) -> Program[Policy]:
        account_id, policy_id = check_id("account", account_id), check_id("policy", policy_id)
        current = Policy.from_row(
            (yield from self._fetch("policies", "policy", account_id, policy_id))
        )
        if current.disabled == disabled:
            return current
        now = self._now()
        row = yield from update(
            "policies", "policy", account_id, policy_id,
            {"disabled_at": now if disabled else None, "updated_at": now},
        )
        return Policy.from_row(row)

    @transaction
    def delete_policy(self, account_id: str, policy_id: str) -> Program[None]:
        account_id, policy_id = check_id("account", account_id), check_id("policy", policy_id)
        yield from delete("policies", "policy", account_id, policy_id)

    @transaction
    def list_policies_for_actor(
        self, account_id: str, actor_id: str
    ) -> Program[list[PolicyGrant]]:
        """Enabled policies whose group the actor is in, with the granting membership.

        Users are implicit members of the managed Everyone group (membership
        ``None``); service accounts are not (REFERENCE 2.1).  Conditions are
        not evaluated here: that is the policy engine's job.
        """
        account_id, actor_id = check_id("account", account_id), check_id("actor", actor_id)
        actor = Actor.from_row((yield from self._fetch("actors", "actor", account_id, actor_id)))
        if actor.disabled:
            return []
        explicit = yield Query(
            "SELECT p.*, m.id AS membership_id FROM policies p"
            " JOIN memberships m ON m.account_id = p.account_id AND m.group_id = p.group_id"
            " WHERE p.account_id = ? AND m.actor_id = ? AND p.disabled_at IS NULL"
            " ORDER BY p.inserted_at, p.id",
            (account_id, actor_id),
        )
        grants = [PolicyGrant(Policy.from_row(r), str(r["membership_id"])) for r in explicit]
        if actor.is_user:
            implicit = yield Query(
                "SELECT p.* FROM policies p"
                " JOIN groups g ON g.account_id = p.account_id AND g.id = p.group_id"
                " WHERE p.account_id = ? AND g.type = 'managed' AND p.disabled_at IS NULL"
                " ORDER BY p.inserted_at, p.id",
                (account_id,),
            )
            grants.extend(PolicyGrant(Policy.from_row(r), None) for r in implicit)
        return grants
