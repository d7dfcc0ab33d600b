from twisted.application.service import ServiceMaker

firezone_gateway = ServiceMaker(
    "Firezone gateway",
    "firezone.gateway.tap",
    "Firezone gateway: tunnels to resources",
    "firezone-gateway",
)
