"""What every role process has: a service tree, readiness, metrics and the health endpoint."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService
from twisted.logger import Logger

from firezone import __version__
from firezone.common.health import Readiness, health_service
from firezone.common.metrics import new_registry

_log = Logger()


class RoleService(MultiService):
    """The root service of a role; children are added by the role's ``tap.py``."""

    def __init__(
        self,
        role: str,
        reactor: Any,
        health_address: tuple[str, int] | None,
        registry: CollectorRegistry | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        super().__init__()
        self.role = role
        self.reactor = reactor
        self.registry = registry if registry is not None else new_registry(role)
        self.readiness = readiness if readiness is not None else Readiness()
        self.health_address = health_address
        if health_address is not None:
            health_service(reactor, health_address, self.readiness, self.registry).setServiceParent(
                self
            )

    def startService(self) -> None:
        _log.info(
            "firezone-{role} {version} starting (health on {address})",
            role=self.role,
            version=__version__,
            address=self.health_address,
        )
        super().startService()
