"""The pure policy engine: who may reach which resource, when, through which gateway.

Nothing here touches the store, the network or the clock: callers pass plain
values (``firezone.policy.model``) and ``now``; decisions come back as values.
"""
