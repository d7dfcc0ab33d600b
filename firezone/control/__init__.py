"""The control-plane channel client: how relays, gateways and clients stay joined to the portal.

``channel`` is the transport-free state machine, ``client`` the Twisted/Autobahn
service that runs it; ``login`` builds the socket URL and headers, ``rejection``
reads refused upgrades, ``backoff`` holds the retry schedules and ``fatal``
ends a role process with a failure status.  The frame codec is
:mod:`firezone.wire.phoenix`, shared with the portal's server side.
"""
