"""Devices (clients and gateways) with their tunnel addresses, and policy authorizations."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_address
from itertools import islice
from typing import Any

from firezone.portal import addresses
from firezone.portal.store import validate
from firezone.portal.store._base import OpsBase
from firezone.portal.store.errors import Conflict, InvalidRecord
from firezone.portal.store.program import (
    Program,
    Query,
    changed,
    check_choice,
    check_id,
    check_ip,
    check_text,
    delete,
    fetch_one,
    insert,
    new_id,
    optional_id,
    optional_text,
    transaction,
    update,
)
from firezone.portal.store.records import (
    DEVICE_TYPES,
    Device,
    Policy,
    PolicyAuthorization,
    Resource,
)

#: candidates checked per query while probing for a free tunnel address
PROBE_BATCH = 64


class DeviceOps(OpsBase):
    # -- devices ------------------------------------------------------------------------

    @transaction
    def upsert_device(
        self,
        account_id: str,
        type: str,
        external_id: str,
        *,
        name: str,
        public_key: str,
        actor_id: str | None = None,
        site_id: str | None = None,
        remote_ip: str | None = None,
        user_agent: str | None = None,
        version: str | None = None,
    ) -> Program[Device]:
        """Record a device connecting, by ``(account, type, external_id)``.

        A new device gets a fresh ``psk_base`` and one IPv4 and one IPv6 tunnel
        address unique in the account; a known one keeps them and has its
        name, key and last-seen facts updated.  A client id already used by
        another actor is a Conflict (no taking over someone else's device); a
        gateway may move to another site.
        """
        account_id = check_id("account", account_id)
        check_choice("device type", type, DEVICE_TYPES)
        external_id = check_text("external id", external_id)
        seen = {
            "name": check_text("device name", name),
            "public_key": validate.public_key(public_key),
            "last_seen_remote_ip": check_ip("remote ip", remote_ip),
            "last_seen_user_agent": optional_text("user agent", user_agent, max_len=1024),
            "last_seen_version": optional_text("version", version, max_len=64),
        }
        actor_id = optional_id("actor", actor_id)
        site_id = optional_id("site", site_id)
        if type == "client" and (actor_id is None or site_id is not None):
            raise InvalidRecord("a client device needs an actor and no site")
        if type == "gateway" and (site_id is None or actor_id is not None):
            raise InvalidRecord("a gateway device needs a site and no actor")
        # Serialise address allocation per account across portal nodes.
        yield Query(
            "SELECT id FROM accounts WHERE id = ? FOR NO KEY UPDATE", (account_id,),
            dialect="postgresql",
        )
        yield from self._require_account(account_id)
        if actor_id is not None:
            yield from self._fetch("actors", "actor", account_id, actor_id)
        if site_id is not None:
            yield from self._fetch("sites", "site", account_id, site_id)
        now = self._now()
        rows = yield Query(
            "SELECT * FROM devices WHERE account_id = ? AND type = ? AND external_id = ?",
            (account_id, type, external_id),
        )
        if rows:
            current = Device.from_row(rows[0])
            if type == "client" and current.actor_id != actor_id:
                raise Conflict("this device id is registered to another actor")
            row = yield from update(
                "devices", "device", account_id, current.id,
                {**seen, "site_id": site_id, "last_seen_at": now, "updated_at": now},
            )
            return Device.from_row(row)
        ipv4 = yield from self._allocate(account_id, "ipv4", addresses.TUNNEL_IPV4)
        ipv6 = yield from self._allocate(account_id, "ipv6", addresses.TUNNEL_IPV6)
        row = yield from insert(
            "devices",
            {"account_id": account_id, "id": new_id(), "type": type, "external_id": external_id,
             **seen, "psk_base": self._randbytes(32), "ipv4": ipv4, "ipv6": ipv6,
             "actor_id": actor_id, "site_id": site_id, "last_seen_at": now,
             "verified_at": None, "inserted_at": now, "updated_at": now},
            account_id=account_id,
        )
        return Device.from_row(row)

    def _allocate(
        self, account_id: str, column: str, network: IPv4Network | IPv6Network
    ) -> Program[str]:
        """The first free address probing linearly from a random start."""
        candidates = addresses.probe(network, self._randbelow(addresses.usable_count(network)))
        while batch := list(islice(candidates, PROBE_BATCH)):
            marks = ", ".join("?" for _ in batch)
            rows = yield Query(
                f"SELECT {column} AS address FROM devices"
                f" WHERE account_id = ? AND {column} IN ({marks})",
                (account_id, *batch),
            )
            taken = {ip_address(str(r["address"])) for r in rows}
            for candidate in batch:
                if ip_address(candidate) not in taken:
                    return candidate
        raise Conflict(f"no free tunnel address left in {network} for this account")

    @transaction
    def get_device(self, account_id: str, device_id: str) -> Program[Device]:
        account_id, device_id = check_id("account", account_id), check_id("device", device_id)
        row = yield from self._fetch("devices", "device", account_id, device_id)
        return Device.from_row(row)

    @transaction
    def find_device(self, account_id: str, type: str, external_id: str) -> Program[Device]:
        account_id = check_id("account", account_id)
        row = yield from fetch_one(
            "device", str(external_id),
            "SELECT * FROM devices WHERE account_id = ? AND type = ? AND external_id = ?",
            (account_id, str(type), str(external_id)),
        )
        return Device.from_row(row)

    @transaction
    def list_devices(
        self,
        account_id: str,
        type: str | None = None,
        site_id: str | None = None,
        actor_id: str | None = None,
    ) -> Program[list[Device]]:
        account_id = check_id("account", account_id)
        sql = "SELECT * FROM devices WHERE account_id = ?"
        params: tuple[Any, ...] = (account_id,)
        if type is not None:
            sql, params = sql + " AND type = ?", (*params, check_choice("type", type, DEVICE_TYPES))
        if site_id is not None:
            sql, params = sql + " AND site_id = ?", (*params, check_id("site", site_id))
        if actor_id is not None:
            sql, params = sql + " AND actor_id = ?", (*params, check_id("actor", actor_id))
        rows = yield Query(sql + " ORDER BY inserted_at, id", params)
        return [Device.from_row(r) for r in rows]

    @transaction
    def set_device_verified(
        self, account_id: str, device_id: str, verified: bool
    ) -> Program[Device]:
        """An admin's "verify device" (the ``client_verified`` policy condition)."""
        account_id, device_id = check_id("account", account_id), check_id("device", device_id)
        now = self._now()
        row = yield from update(
            "devices", "device", account_id, device_id,
            {"verified_at": now if verified else None, "updated_at": now},
        )
        return Device.from_row(row)

    @transaction
    def delete_device(self, account_id: str, device_id: str) -> Program[None]:
        account_id, device_id = check_id("account", account_id), check_id("device", device_id)
        yield from delete("devices", "device", account_id, device_id)

    # -- policy authorizations ----------------------------------------------------------

    @transaction
    def create_policy_authorization(
        self,
        account_id: str,
        *,
        token_id: str,
        policy_id: str,
        initiating_device_id: str,
        receiving_device_id: str,
        resource_id: str,
        membership_id: str | None = None,
        initiator_remote_ip: str | None = None,
        initiator_user_agent: str | None = None,
        receiver_remote_ip: str | None = None,
        expires_at: float | None = None,
    ) -> Program[PolicyAuthorization]:
        """Record that a client was let through to a resource via a gateway.

        Every referenced row must belong to the account, and they must agree:
        the policy is for this resource, the initiator is a client, a gateway
        receiver serves the resource's site, the membership (if any) is the
        initiator's actor in the policy's group.
        """
        account_id = check_id("account", account_id)
        token_id = check_id("token", token_id)
        policy_id = check_id("policy", policy_id)
        initiating_device_id = check_id("device", initiating_device_id)
        receiving_device_id = check_id("device", receiving_device_id)
        resource_id = check_id("resource", resource_id)
        membership_id = optional_id("membership", membership_id)
        values = {
            "initiator_remote_ip": check_ip("initiator remote ip", initiator_remote_ip),
            "initiator_user_agent": optional_text(
                "initiator user agent", initiator_user_agent, max_len=1024
            ),
            "receiver_remote_ip": check_ip("receiver remote ip", receiver_remote_ip),
            "expires_at": None if expires_at is None else float(expires_at),
        }
        yield from self._fetch("tokens", "token", account_id, token_id)
        policy = Policy.from_row((yield from self._fetch("policies", "policy", account_id,
                                                         policy_id)))
        resource = Resource.from_row(
            (yield from self._fetch("resources", "resource", account_id, resource_id))
        )
        initiator = Device.from_row(
            (yield from self._fetch("devices", "device", account_id, initiating_device_id))
        )
        receiver = Device.from_row(
            (yield from self._fetch("devices", "device", account_id, receiving_device_id))
        )
        if policy.resource_id != resource.id:
            raise InvalidRecord("the policy does not grant this resource")
        if initiator.type != "client":
            raise InvalidRecord("the initiating device must be a client")
        if receiver.type == "gateway" and receiver.site_id != resource.site_id:
            raise InvalidRecord("the receiving gateway does not serve the resource's site")
        if membership_id is not None:
            membership = yield from self._fetch("memberships", "membership", account_id,
                                                membership_id)
            if (str(membership["group_id"]) != policy.group_id
                    or str(membership["actor_id"]) != initiator.actor_id):
                raise InvalidRecord("the membership does not link this client to the policy")
        row = yield from insert(
            "policy_authorizations",
            {"account_id": account_id, "id": new_id(), "token_id": token_id,
             "policy_id": policy_id, "initiating_device_id": initiating_device_id,
             "receiving_device_id": receiving_device_id, "resource_id": resource_id,
             "membership_id": membership_id, **values, "inserted_at": self._now()},
            account_id=account_id,
        )
        return PolicyAuthorization.from_row(row)

    @transaction
    def get_policy_authorization(
        self, account_id: str, authorization_id: str
    ) -> Program[PolicyAuthorization]:
        account_id = check_id("account", account_id)
        authorization_id = check_id("policy authorization", authorization_id)
        row = yield from self._fetch(
            "policy_authorizations", "policy authorization", account_id, authorization_id
        )
        return PolicyAuthorization.from_row(row)

    @transaction
    def list_policy_authorizations(
        self, account_id: str, device_id: str | None = None
    ) -> Program[list[PolicyAuthorization]]:
        """All of the account's authorizations, or those a device takes part in."""
        account_id = check_id("account", account_id)
        sql = "SELECT * FROM policy_authorizations WHERE account_id = ?"
        params: tuple[Any, ...] = (account_id,)
        if device_id is not None:
            device_id = check_id("device", device_id)
            sql += " AND (initiating_device_id = ? OR receiving_device_id = ?)"
            params = (account_id, device_id, device_id)
        rows = yield Query(sql + " ORDER BY inserted_at, id", params)
        return [PolicyAuthorization.from_row(r) for r in rows]

    @transaction
    def delete_policy_authorization(self, account_id: str, authorization_id: str) -> Program[None]:
        account_id = check_id("account", account_id)
        authorization_id = check_id("policy authorization", authorization_id)
        yield from delete(
            "policy_authorizations", "policy authorization", account_id, authorization_id
        )

    @transaction
    def delete_expired_policy_authorizations(self) -> Program[int]:
        """The every-minute sweep (REFERENCE 2.5); returns how many rows went."""
        rows = yield Query(
            "DELETE FROM policy_authorizations WHERE expires_at IS NOT NULL AND expires_at <= ?"
            " RETURNING account_id, id",
            (self._now(),),
        )
        for row in rows:
            yield from changed(
                "delete", "policy_authorizations", str(row["account_id"]), str(row["id"])
            )
        return len(rows)
