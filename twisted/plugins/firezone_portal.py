from twisted.application.service import ServiceMaker

firezone_portal = ServiceMaker(
    "Firezone portal",
    "firezone.portal.tap",
    "Firezone portal: admin UI, API, policy engine",
    "firezone-portal",
)
