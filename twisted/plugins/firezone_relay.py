from twisted.application.service import ServiceMaker

firezone_relay = ServiceMaker(
    "Firezone relay",
    "firezone.relay.tap",
    "Firezone STUN/TURN relay",
    "firezone-relay",
)
