"""The portal's control-plane WebSocket API (REFERENCE 1): client, gateway and relay sockets.

:mod:`~firezone.portal.api.gate` admits upgrades, :mod:`~firezone.portal.api.socket`
speaks Phoenix, the channel modules implement the three topics, and
:mod:`~firezone.portal.api.node` connects the channels of this node to each other,
to the store's change notifications and to the other nodes.
"""
