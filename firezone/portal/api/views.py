"""The JSON shapes the portal pushes to clients and gateways (REFERENCE 1.3, 1.4, 2.5).

Pure renderers, one per reference view module: resources
(``client/views/resource.ex``, ``gateway/views/resource.ex``), relays with
their TURN credentials (``client/views/relay.ex``), interfaces, the client as
a gateway sees it (``gateway/views/client.ex``) and the subject.  Times are
unix seconds; ids are UUID strings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from firezone.credentials import IceCredentials, turn_credentials
from firezone.policy.model import Filter, Resource
from firezone.portal.presence import RelayEntry
from firezone.portal.store.records import AccountConfig

__all__ = [
    "GATEWAY_RELAY_EXPIRES_AT",
    "FlowLogsConfig",
    "client_interface",
    "client_resource_view",
    "gateway_client_view",
    "gateway_interface",
    "gateway_resource_view",
    "ice_views",
    "relay_views",
    "render_filters",
    "subject_view",
]

#: Gateways' relay credentials expire at 2038-01-01T00:00:00Z so they stay stable
#: across reconnects (``@relay_credentials_expire_at``).
GATEWAY_RELAY_EXPIRES_AT = 2145916800


@dataclass(frozen=True)
class FlowLogsConfig:
    """``init.flow_logs``; ``upload_interval_secs = 0`` disables uploads (REFERENCE 6.4)."""

    api_url: str
    upload_interval_secs: int = 0
    upload_batch_size: int = 1000

    @property
    def uploads_enabled(self) -> bool:
        return self.upload_interval_secs > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "api_url": self.api_url,
            "upload_interval_secs": self.upload_interval_secs,
            "upload_batch_size": self.upload_batch_size,
        }


def render_filters(filters: Iterable[Filter]) -> list[dict[str, Any]]:
    """One entry per port range; a tcp/udp filter without ports is ``{protocol}`` (all ports)."""
    out: list[dict[str, Any]] = []
    for f in filters:
        if not f.ports:
            out.append({"protocol": f.protocol})
            continue
        for r in f.ports:
            out.append(
                {"protocol": f.protocol, "port_range_start": r.start, "port_range_end": r.end}
            )
    return out


def _ip_as_cidr(address: str | None) -> str | None:
    if address is None:
        return None
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def client_resource_view(
    resource: Resource, site_name: str | None, *, sites_key: str = "sites"
) -> dict[str, Any]:
    """A resource as a client sees it; ``sites_key`` is ``gateway_groups`` for older clients."""
    sites = [{"id": resource.site_id, "name": site_name}] if resource.site_id else []
    if resource.type == "internet":
        return {"id": resource.id, "type": "internet", "can_be_disabled": True, sites_key: sites}
    view: dict[str, Any] = {
        "id": resource.id,
        "type": "cidr" if resource.type == "ip" else resource.type,
        "address": _ip_as_cidr(resource.address) if resource.type == "ip" else resource.address,
        "address_description": resource.address_description,
        "name": resource.name,
        "filters": render_filters(resource.filters),
        sites_key: sites,
    }
    if resource.type != "ip" and resource.ip_stack is not None:
        view["ip_stack"] = resource.ip_stack
    return view


def gateway_resource_view(resource: Resource) -> dict[str, Any]:
    """A resource as a gateway sees it (``ip`` as a ``/32`` or ``/128`` cidr)."""
    if resource.type == "internet":
        return {"id": resource.id, "type": "internet"}
    return {
        "id": resource.id,
        "type": "cidr" if resource.type == "ip" else resource.type,
        "address": _ip_as_cidr(resource.address) if resource.type == "ip" else resource.address,
        "name": resource.name,
        "filters": render_filters(resource.filters),
    }


def _addr(address: str, port: int) -> str:
    if ":" in address:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def relay_views(
    relays: Iterable[RelayEntry], device_public_key: str, expires_at: int
) -> list[dict[str, Any]]:
    """One TURN entry per address family of each relay, sharing the relay's id.

    The credentials are derived from the relay's stamp secret and the device's
    public key (REFERENCE 2.5), so only that relay can check them.
    """
    out: list[dict[str, Any]] = []
    for relay in relays:
        username, password = turn_credentials(device_public_key, relay.stamp_secret, expires_at)
        for address in (relay.ipv4, relay.ipv6):
            if address is None:
                continue
            out.append({
                "id": relay.id,
                "type": "turn",
                "addr": _addr(address, relay.port),
                "username": username,
                "password": password,
                "expires_at": expires_at,
            })
    return out


def client_interface(ipv4: str, ipv6: str, config: AccountConfig) -> dict[str, Any]:
    """The client's tunnel addresses and the account's DNS settings (``interface.ex``)."""
    do53 = list(config.upstream_do53)
    return {
        "ipv4": ipv4,
        "ipv6": ipv6,
        "search_domain": config.search_domain,
        "upstream_do53": [{"ip": ip} for ip in do53],
        "upstream_doh": [{"url": url} for url in config.upstream_doh],
        "upstream_dns": [
            {"protocol": "ip_port", "address": f"{_addr(ip, 53)}"} for ip in do53
        ],
    }


def gateway_interface(ipv4: str, ipv6: str) -> dict[str, Any]:
    return {"ipv4": ipv4, "ipv6": ipv6}


def ice_views(credentials: IceCredentials) -> tuple[dict[str, str], dict[str, str]]:
    """``(initiator, receiver)`` credentials as ``{username, password}`` objects."""
    return (
        {"username": credentials.initiator_username, "password": credentials.initiator_password},
        {"username": credentials.receiver_username, "password": credentials.receiver_password},
    )


def gateway_client_view(
    *,
    client_id: str,
    public_key: str,
    preshared_key: str,
    ipv4: str,
    ipv6: str,
    version: str | None,
    os_name: str | None,
    os_version: str | None,
    device_serial: str | None = None,
    device_uuid: str | None = None,
    firebase_installation_id: str | None = None,
    identifier_for_vendor: str | None = None,
) -> dict[str, Any]:
    """The client in ``create_authorization`` (``gateway/views/client.ex``)."""
    return {
        "id": client_id,
        "public_key": public_key,
        "preshared_key": preshared_key,
        "ipv4": ipv4,
        "ipv6": ipv6,
        "version": version,
        "device_serial": device_serial,
        "device_os_name": os_name,
        "device_os_version": os_version,
        "device_uuid": device_uuid,
        "firebase_installation_id": firebase_installation_id,
        "identifier_for_vendor": identifier_for_vendor,
    }


def subject_view(
    *, actor_id: str, actor_name: str, actor_email: str | None, auth_provider_id: str | None
) -> dict[str, Any]:
    """``create_authorization.subject``, kept for gateways that do not read the ingest token."""
    return {
        "auth_provider_id": auth_provider_id,
        "actor_id": actor_id,
        "actor_email": actor_email,
        "actor_name": actor_name,
    }
