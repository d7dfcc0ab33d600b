"""Clients' resources are recomputed per account: one store read per change, not per client."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from firezone.portal.store.sqlite import SQLiteStore
from tests.portal.api.harness import Fixture, Peer, World, wait

#: Store reads a client's resource recompute can make.
_READS = (
    "get_account", "get_actor", "get_device", "list_actors", "list_groups", "list_memberships",
    "list_policies", "list_policies_for_actor", "list_resources", "list_sites",
)


class CountingStore:
    """Delegates to a SQLite store and counts the calls of each method."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted

    def reads(self) -> dict[str, int]:
        return {name: self.calls[name] for name in _READS if self.calls[name]}


class FanoutTests(SynchronousTestCase):
    def world_with(self, clients: int) -> tuple[World, Fixture, CountingStore, list[Peer]]:
        world = World()
        fx = world.fixture()
        counting = CountingStore(world.store)
        world.store = counting  # type: ignore[assignment]
        world.node()
        peers = [world.client(fx, external_id=f"laptop-{i}") for i in range(clients)]
        world.flush()
        for peer in peers:
            peer.clear()
        counting.calls.clear()
        return world, fx, counting, peers

    def change(self, clients: int, act: Callable[[World, Fixture], None]) -> dict[str, int]:
        """The store reads that ``act`` causes with ``clients`` connected; every client
        must have been pushed something."""
        world, fx, counting, peers = self.world_with(clients)
        act(world, fx)
        world.flush()
        for peer in peers:
            self.assertTrue(peer.received, "a client got no push")
        return counting.reads()

    def test_one_account_load_per_change(self) -> None:
        """A new policy reads the account once, whether 1 or 8 clients are connected."""
        def grant(world: World, fx: Fixture) -> None:
            db = wait(world.store.create_resource(fx.account.id, "ip", "10.9.9.9", "DB",
                                                  fx.site.id))
            wait(world.store.create_policy(fx.account.id, fx.everyone.id, db.id))

        one = self.change(1, grant)
        many = self.change(8, grant)
        self.assertEqual(one, many)
        self.assertEqual(many.get("list_policies"), 1)
        self.assertEqual(many.get("get_account"), 1)
        self.assertNotIn("list_policies_for_actor", many)
        self.assertNotIn("get_device", many)

    def test_minute_tick_loads_account_once(self) -> None:
        """The minute re-evaluation also reads the account once for all its clients."""
        world, _fx, counting, _peers = self.world_with(5)
        world.nodes[0].tick()
        world.flush()
        self.assertEqual(counting.reads().get("list_policies"), 1)
        self.assertEqual(counting.reads().get("get_account"), 1)
        self.assertNotIn("get_actor", counting.reads())

    def test_pushes_only_differences(self) -> None:
        """Each client gets the deletion then the creation, and nothing unchanged."""
        world, fx, counting, peers = self.world_with(3)
        [policy] = wait(world.store.list_policies(fx.account.id, resource_id=fx.wiki.id))
        counting.calls.clear()
        db = wait(world.store.create_resource(fx.account.id, "ip", "10.9.9.9", "DB", fx.site.id))
        wait(world.store.create_policy(fx.account.id, fx.everyone.id, db.id))
        wait(world.store.delete_policy(fx.account.id, policy.id))
        world.flush()
        for peer in peers:
            pushed = [(f["event"], f["payload"]) for f in peer.received]
            self.assertEqual([e for e, _ in pushed],
                             ["resource_deleted", "resource_created_or_updated"])
            self.assertEqual(pushed[0][1], fx.wiki.id)
            self.assertEqual(pushed[1][1]["id"], db.id)
        self.assertEqual(counting.reads().get("list_policies"), 1)

    def test_own_device_change_reads_only_that_device(self) -> None:
        """Verifying one device re-reads that device alone, not every client's."""
        world, fx, counting, _peers = self.world_with(4)
        device = wait(world.store.find_device(fx.account.id, "client", "laptop-2"))
        wait(world.store.set_device_verified(fx.account.id, device.id, True))
        counting.calls.clear()
        world.flush()
        self.assertEqual(counting.reads().get("get_device"), 1)
        self.assertEqual(counting.reads().get("list_policies"), 1)
