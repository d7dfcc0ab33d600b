"""What the upgrade check learned about a connecting component, handed to its channel."""

from __future__ import annotations

from dataclasses import dataclass

from firezone.policy.geo import Location
from firezone.portal.api.connect import DeviceParams, Endpoint, RelayParams, UserAgent
from firezone.portal.store.records import Account, Actor, Device, Token

__all__ = ["ConnectContext"]


@dataclass(frozen=True)
class ConnectContext:
    """An admitted connection: who (token and its rows), from where, with what.

    ``device``/``account`` are set for clients and gateways, ``actor`` for
    clients, ``relay`` for relays.
    """

    endpoint: Endpoint
    token: Token
    remote_ip: str
    user_agent: UserAgent
    location: Location
    account: Account | None = None
    actor: Actor | None = None
    device: Device | None = None
    params: DeviceParams | None = None
    relay: RelayParams | None = None
