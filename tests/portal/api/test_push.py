"""Real-time pushes driven by the store's change notifications and the clock."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from firezone.portal.store.records import AccountConfig
from tests.portal.api.harness import Fixture, Peer, World, wait


class PushTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.world = World()
        self.fx: Fixture = self.world.fixture()
        self.node = self.world.node()
        self.store = self.world.store
        self.account_id = self.fx.account.id
        self.gateway = self.world.gateway(self.fx)
        self.client = self.world.client(self.fx)
        self.client.clear()
        self.gateway.clear()

    def authorized(self, resource_id: str) -> str:
        """Run an authorization for ``resource_id`` to completion; returns the row's id."""
        self.client.push("request_authorization", {"resource_id": resource_id})
        create = self.gateway.last("create_authorization")
        self.gateway.push("authorization_created", {"ref": create["ref"]})
        self.assertEqual(self.client.last("authorization_created")["resource_id"], resource_id)
        rows = wait(self.store.list_policy_authorizations(self.account_id))
        return next(r.id for r in rows if r.resource_id == resource_id)

    def pushed(self, peer: Peer) -> list[tuple[str, object]]:
        return [(f["event"], f["payload"]) for f in peer.received if f["event"] != "phx_reply"]

    def client_id(self) -> str:
        return wait(self.store.find_device(self.account_id, "client", "laptop-1")).id

    def test_new_resource_and_policy(self) -> None:
        """A resource becomes visible when a policy grants it."""
        db = wait(self.store.create_resource(self.account_id, "ip", "10.9.9.9", "DB",
                                             self.fx.site.id))
        self.world.flush()
        self.assertEqual(self.pushed(self.client), [])
        wait(self.store.create_policy(self.account_id, self.fx.everyone.id, db.id))
        self.world.flush()
        [(event, view)] = self.pushed(self.client)
        self.assertEqual(event, "resource_created_or_updated")
        self.assertEqual(view["id"], db.id)  # type: ignore[index]
        self.assertEqual(view["address"], "10.9.9.9/32")  # type: ignore[index]

    def test_resource_deleted_is_a_bare_id_and_gateway_rejects(self) -> None:
        """``resource_deleted`` carries the UUID string; the gateway drops the pair."""
        self.authorized(self.fx.network.id)
        wait(self.store.delete_resource(self.account_id, self.fx.network.id))
        self.world.flush()
        self.assertIn(("resource_deleted", self.fx.network.id), self.pushed(self.client))
        self.assertEqual(self.gateway.events("reject_access"),
                         [{"client_id": self.client_id(), "resource_id": self.fx.network.id}])

    def test_site_move_is_delete_then_create(self) -> None:
        """connlib cannot move a resource between sites: deleted first, then created."""
        other = wait(self.store.create_site(self.account_id, "Other"))
        wait(self.store.update_resource(self.account_id, self.fx.wiki.id, site_id=other.id))
        self.world.flush()
        events = self.pushed(self.client)
        self.assertEqual([e for e, _ in events],
                         ["resource_deleted", "resource_created_or_updated"])
        self.assertEqual(events[0][1], self.fx.wiki.id)
        self.assertEqual(events[1][1]["sites"][0]["id"], other.id)  # type: ignore[index]

    def test_membership_removed(self) -> None:
        """Leaving the group withdraws the resource from the client and the pair from the
        gateway; the authorization row is gone."""
        self.authorized(self.fx.wiki.id)
        [membership] = wait(self.store.list_memberships(self.account_id,
                                                        group_id=self.fx.engineers.id))
        wait(self.store.delete_membership(self.account_id, membership.id))
        self.world.flush()
        self.assertEqual(self.client.events("resource_deleted"), [self.fx.wiki.id])
        self.assertEqual(self.gateway.events("reject_access"),
                         [{"client_id": self.client_id(), "resource_id": self.fx.wiki.id}])
        rows = wait(self.store.list_policy_authorizations(self.account_id))
        self.assertEqual([r.resource_id for r in rows], [])

    def test_policy_disabled_revokes_and_deletes_row(self) -> None:
        """A disabled policy no longer backs the authorization: reject_access + row deleted."""
        row_id = self.authorized(self.fx.network.id)
        [policy] = wait(self.store.list_policies(self.account_id,
                                                 resource_id=self.fx.network.id))
        wait(self.store.set_policy_disabled(self.account_id, policy.id, True))
        self.world.flush()
        self.assertEqual(self.client.events("resource_deleted"), [self.fx.network.id])
        self.assertEqual(len(self.gateway.events("reject_access")), 1)
        ids = [r.id for r in wait(self.store.list_policy_authorizations(self.account_id))]
        self.assertNotIn(row_id, ids)
        # The policy comes back: the resource is listed again.
        wait(self.store.set_policy_disabled(self.account_id, policy.id, False))
        self.world.flush()
        self.assertEqual(self.client.last("resource_created_or_updated")["id"],
                         self.fx.network.id)

    def test_authorization_row_deleted(self) -> None:
        """Deleting an authorization row (an admin, the sweeper) reaches the gateway."""
        row_id = self.authorized(self.fx.network.id)
        wait(self.store.delete_policy_authorization(self.account_id, row_id))
        self.world.flush()
        self.assertEqual(len(self.gateway.events("reject_access")), 1)

    def test_filters_and_address_changes(self) -> None:
        """Filter changes are ``resource_updated`` for the gateway; an address change
        withdraws the pair (``reject_access``)."""
        self.authorized(self.fx.network.id)
        wait(self.store.update_resource(self.account_id, self.fx.network.id,
                                        filters=[{"protocol": "udp", "ports": ["53"]}]))
        self.world.flush()
        update = self.gateway.last("resource_updated")
        self.assertEqual(update["filters"],
                         [{"protocol": "udp", "port_range_start": 53, "port_range_end": 53}])
        self.assertEqual(self.client.last("resource_created_or_updated")["filters"],
                         update["filters"])
        self.assertEqual(self.gateway.events("reject_access"), [])
        wait(self.store.update_resource(self.account_id, self.fx.network.id,
                                        address="10.1.0.0/16"))
        self.world.flush()
        self.assertEqual(self.gateway.events("reject_access"),
                         [{"client_id": self.client_id(), "resource_id": self.fx.network.id}])
        self.assertEqual(self.client.last("resource_created_or_updated")["address"],
                         "10.1.0.0/16")

    def test_config_changed(self) -> None:
        """Changing the account's DNS settings pushes ``config_changed`` with the interface."""
        wait(self.store.update_account(self.account_id,
                                       config=AccountConfig(upstream_do53=("9.9.9.9",))))
        self.world.flush()
        interface = self.client.last("config_changed")["interface"]
        self.assertEqual(interface["upstream_dns"],
                         [{"protocol": "ip_port", "address": "9.9.9.9:53"}])

    def test_token_deleted_disconnects(self) -> None:
        """A deleted client or gateway token: ``disconnect`` ``token_expired`` and close."""
        for token in wait(self.store.list_tokens(self.account_id, "client")):
            wait(self.store.delete_token(self.account_id, token.id))
        self.world.flush()
        self.assertEqual(self.client.last("disconnect"), {"reason": "token_expired"})
        self.assertTrue(self.client.closed)
        self.assertFalse(self.gateway.closed)
        for token in wait(self.store.list_tokens(self.account_id, "gateway")):
            wait(self.store.delete_token(self.account_id, token.id))
        self.world.flush()
        self.assertEqual(self.gateway.last("disconnect"), {"reason": "token_expired"})
        self.assertTrue(self.gateway.closed)

    def live(self, seconds: float, *peers: Peer) -> None:
        """Let time pass while the peers heartbeat every 10 s, as connlib does."""
        while seconds > 0:
            step = min(10.0, seconds)
            for peer in peers or (self.client,):
                if not peer.closed:
                    peer.send("phoenix", "heartbeat", {})
            self.world.advance(step)
            seconds -= step

    def test_client_token_deleted_revokes_its_authorizations(self) -> None:
        """The token's rows go with it; the gateway drops the pairs it granted."""
        self.authorized(self.fx.network.id)
        for token in wait(self.store.list_tokens(self.account_id, "client")):
            wait(self.store.delete_token(self.account_id, token.id))
        self.world.flush()
        self.assertEqual(self.gateway.events("reject_access"),
                         [{"client_id": self.client_id(), "resource_id": self.fx.network.id}])

    def test_token_expiry_disconnects(self) -> None:
        """The session ends when the client token expires."""
        now = self.world.clock.seconds()
        issued = wait(self.world.tokens.issue_client_token(
            self.account_id, self.fx.alice.id, expires_at=now + 100))
        client = self.world.client(self.fx, token=issued.encoded, external_id="short")
        self.live(99, client)
        self.assertEqual(client.events("disconnect"), [])
        self.live(2, client)
        self.assertEqual(client.last("disconnect"), {"reason": "token_expired"})
        self.assertTrue(client.closed)

    def test_time_window_reevaluated_every_minute(self) -> None:
        """A time-window policy's resource disappears when the window closes (minute tick)."""
        from twisted.application.internet import TimerService

        from firezone.portal.api.service import ApiTimers

        timers = ApiTimers(self.node)
        self.assertIsInstance(timers.services[1], TimerService)
        [policy] = wait(self.store.list_policies(self.account_id, resource_id=self.fx.wiki.id))
        # START is Monday 18:00 UTC; the window ends at 18:02:59.
        wait(self.store.update_policy(self.account_id, policy.id, conditions=[{
            "property": "current_utc_datetime", "operator": "is_in_day_of_week_time_ranges",
            "values": ["M/17:00-18:02/UTC"],
        }]))
        self.world.flush()
        self.assertEqual(self.client.events("resource_deleted"), [])
        timers.start()
        self.addCleanup(timers.stop)
        self.live(170)
        self.assertEqual(self.client.events("resource_deleted"), [])
        self.live(60)
        self.assertEqual(self.client.events("resource_deleted"), [self.fx.wiki.id])

    def test_device_deleted_closes_channel(self) -> None:
        """Deleting the client's device sends ``phx_close`` and drains the socket."""
        wait(self.store.delete_device(self.account_id, self.client_id()))
        self.world.flush()
        self.assertEqual(self.client.received[-1]["event"], "phx_close")
        self.assertTrue(self.client.closed)

    def test_gateway_init_lists_held_authorizations(self) -> None:
        """A reconnecting gateway is told which authorizations it still holds."""
        self.authorized(self.fx.network.id)
        self.gateway.close()
        self.world.advance(1)
        again = self.world.gateway(self.fx)
        [held] = again.last("init")["authorizations"]
        self.assertEqual((held["client_id"], held["resource_id"]),
                         (self.client_id(), self.fx.network.id))
        self.assertIsInstance(held["expires_at"], int)

    def test_other_accounts_changes_are_ignored(self) -> None:
        other = self.world.fixture("globex")
        wait(self.store.delete_resource(other.account.id, other.network.id))
        self.world.flush()
        self.assertEqual(self.pushed(self.client), [])
