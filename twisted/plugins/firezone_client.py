from twisted.application.service import ServiceMaker

firezone_client = ServiceMaker(
    "Firezone client",
    "firezone.client.tap",
    "Firezone headless client",
    "firezone-client",
)
