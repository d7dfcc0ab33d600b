"""The behaviour every ``IPortalStore`` backend must have (one suite, many backends).

Tests are ``async def``; a backend's test class supplies ``self.store``,
``self.clock`` (a ``task.Clock`` the store reads time from) and the hooks
below.  The SQLite class runs each test synchronously (every Deferred it
returns has already fired); the PostgreSQL class runs them on the reactor.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from firezone.portal import addresses
from firezone.portal.store import (
    CHANGES,
    TOKEN_DELETED,
    Conflict,
    InvalidRecord,
    IPortalStore,
    NotFound,
    PortalStore,
    SchemaTooNew,
)
from firezone.portal.store.records import AccountConfig, CreatedAccount
from firezone.portal.store.schema import LATEST_VERSION

E = TypeVar("E", bound=BaseException)

START = 1_700_000_000.0
KEY_A = "A" * 43 + "="
KEY_B = "B" * 43 + "="
NINE_TO_FIVE = {
    "property": "current_utc_datetime",
    "operator": "is_in_day_of_week_time_ranges",
    "values": ["M/09:00-17:00/UTC"],
}


def run_synchronously(cls: type) -> type:
    """Turn every ``async def test_*`` of ``cls`` into a plain test method.

    The coroutine must finish without waiting for anything (true for the
    SQLite store); a test that would need the reactor fails loudly instead of
    passing without running.
    """
    for name in dir(cls):
        method = getattr(cls, name, None) if name.startswith("test_") else None
        if method is not None and inspect.iscoroutinefunction(method):
            setattr(cls, name, _synchronous(method))
    return cls


def _synchronous(method: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[Any], None]:
    @functools.wraps(method)
    def test(self: Any) -> None:
        results: list[object] = []
        Deferred.fromCoroutine(method(self)).addBoth(results.append)
        if not results:
            self.fail("the test did not complete synchronously")
        if isinstance(results[0], Failure):
            results[0].raiseException()

    return test


class World:
    """One account with one of everything, for isolation tests."""

    created: CreatedAccount
    account_id: str
    user: Any
    service: Any
    group: Any
    membership: Any
    provider: Any
    identity: Any
    site: Any
    resource: Any
    policy: Any
    client: Any
    gateway: Any
    token: Any
    gateway_token: Any
    authorization: Any


if TYPE_CHECKING:
    from twisted.trial.unittest import SynchronousTestCase as _TestCase
else:
    _TestCase = object


class StoreContractMixin(_TestCase):
    store: PortalStore
    clock: Clock

    # -- backend hooks ---------------------------------------------------------------
    async def make_store(self, **kw: Any) -> PortalStore:
        """A new store on a new, empty database."""
        raise NotImplementedError

    async def reopen(self) -> PortalStore:
        """Another store opened on ``self.store``'s database."""
        raise NotImplementedError

    async def force_schema_version(self, version: int) -> None:
        """Record ``version`` as applied in ``self.store``'s database (a newer release)."""
        raise NotImplementedError

    async def eventually(self, predicate: Callable[[], bool]) -> None:
        """Wait until notifications delivered so far make ``predicate`` true."""
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------
    async def fails(self, exc_type: type[E], awaitable: Awaitable[Any]) -> E:
        try:
            await awaitable
        except exc_type as e:
            return e
        self.fail(f"expected {exc_type.__name__}")

    async def world(self, slug: str, store: PortalStore | None = None) -> World:
        s = store or self.store
        w = World()
        w.created = await s.create_account(slug, slug.title(), admin_email=f"admin@{slug}.test")
        a = w.account_id = w.created.account.id
        w.user = w.created.admin
        w.service = await s.create_actor(a, "service_account", "bot")
        w.group = await s.create_group(a, "Engineering")
        w.membership = await s.add_membership(a, w.group.id, w.user.id)
        w.provider = await s.create_auth_provider(a, "oidc", "IdP", {"issuer": "https://idp"})
        w.identity = await s.create_identity(a, w.user.id, w.provider.id, "sub-1", "x@y.test")
        w.site = await s.create_site(a, "HQ")
        w.resource = await s.create_resource(a, "cidr", "10.1.0.0/16", "net", w.site.id)
        w.policy = await s.create_policy(a, w.group.id, w.resource.id)
        w.client = await s.upsert_device(a, "client", "c1", name="laptop", public_key=KEY_A,
                                         actor_id=w.user.id)
        w.gateway = await s.upsert_device(a, "gateway", "g1", name="gw", public_key=KEY_B,
                                          site_id=w.site.id)
        w.token = await s.create_token(a, "client", secret_salt="salt", secret_hash="hash",
                                       actor_id=w.user.id, auth_provider_id=w.provider.id,
                                       expires_at=self.clock.seconds() + 3600)
        w.gateway_token = await s.create_token(a, "gateway", secret_salt="salt",
                                               secret_hash="hash", site_id=w.site.id)
        w.authorization = await s.create_policy_authorization(
            a, token_id=w.token.id, policy_id=w.policy.id, initiating_device_id=w.client.id,
            receiving_device_id=w.gateway.id, resource_id=w.resource.id,
            membership_id=w.membership.id, expires_at=self.clock.seconds() + 600,
        )
        return w

    # -- interface and migrations ------------------------------------------------------
    async def test_provides_interface(self) -> None:
        """The backend provides every method of IPortalStore."""
        self.assertTrue(verifyObject(IPortalStore, self.store))

    async def test_fresh_database_is_at_latest_version(self) -> None:
        """Opening an empty database applies every migration."""
        self.assertEqual(await self.store.schema_version(), LATEST_VERSION)

    async def test_reopen_is_idempotent(self) -> None:
        """Opening a migrated database again keeps its version and its rows."""
        created = await self.store.create_account("acme", "Acme")
        again = await self.reopen()
        self.assertEqual(await again.schema_version(), LATEST_VERSION)
        self.assertEqual(await again.get_account(created.account.id),
                         created.account)

    async def test_refuses_newer_schema(self) -> None:
        """A database migrated by a newer release is refused with SchemaTooNew."""
        await self.force_schema_version(LATEST_VERSION + 1)
        error = await self.fails(SchemaTooNew, self.reopen())
        self.assertEqual((error.found, error.known), (LATEST_VERSION + 1, LATEST_VERSION))

    # -- accounts ----------------------------------------------------------------------
    async def test_create_account_with_everyone_and_email_provider(self) -> None:
        """An account comes with its managed Everyone group and an email provider."""
        created = await self.store.create_account("acme", "Acme")
        a = created.account.id
        groups = await self.store.list_groups(a)
        self.assertEqual([(g.name, g.type) for g in groups], [("Everyone", "managed")])
        self.assertEqual(created.everyone_group, groups[0])
        providers = await self.store.list_auth_providers(a)
        self.assertEqual([p.type for p in providers], ["email_otp"])
        self.assertIsNone(created.admin)
        self.assertEqual(created.account.inserted_at, START)

    async def test_create_account_with_admin(self) -> None:
        """admin_email creates an account_admin_user with an email identity."""
        created = await self.store.create_account("acme", "Acme", admin_email="Boss@Acme.test")
        assert created.admin is not None and created.admin_identity is not None
        self.assertEqual(created.admin.type, "account_admin_user")
        self.assertEqual(created.admin.email, "boss@acme.test")
        found = await self.store.find_identity(
            created.account.id, created.email_provider.id, "boss@acme.test"
        )
        self.assertEqual(found.actor_id, created.admin.id)

    async def test_create_account_is_atomic(self) -> None:
        """A failure after the first inserts leaves no account and announces nothing."""
        notes: list[str] = []
        await self.store.listen(CHANGES, notes.append)
        await self.fails(InvalidRecord, self.store.create_account(
            "acme", "Acme", admin_email="a@acme.test", admin_name="bad\x00name"))
        self.assertEqual(await self.store.list_accounts(), [])
        await self.store.notify(CHANGES, "marker")
        await self.eventually(lambda: "marker" in notes)
        self.assertEqual(notes, ["marker"])

    async def test_slug_rules(self) -> None:
        """Slugs are unique, lower-case, 3+ characters and not UUID-like."""
        await self.store.create_account("acme", "Acme")
        await self.fails(Conflict, self.store.create_account("acme", "Other"))
        for bad in ("ab", "Acme", "a b", "-acme", "123e4567-e89b-12d3-a456-426614174000"):
            await self.fails(InvalidRecord, self.store.create_account(bad, "x"))
        self.assertEqual(len(await self.store.list_accounts()), 1)

    async def test_get_account_by_slug(self) -> None:
        """Accounts are found by slug and by id; unknown ones are NotFound."""
        created = await self.store.create_account("acme", "Acme")
        self.assertEqual(await self.store.get_account_by_slug("acme"), created.account)
        await self.fails(NotFound, self.store.get_account_by_slug("nope"))
        await self.fails(NotFound, self.store.get_account("not-a-uuid"))

    async def test_account_config(self) -> None:
        """The DNS config is validated and normalised; bad values are refused."""
        created = await self.store.create_account("acme", "Acme")
        a = created.account.id
        account = await self.store.update_account(a, config=AccountConfig(
            search_domain="Corp.Example.", upstream_do53=("1.1.1.1", "2606:4700:4700::1111"),
            upstream_doh=("https://dns.google/dns-query",)))
        self.assertEqual(account.config, AccountConfig(
            "corp.example", ("1.1.1.1", "2606:4700:4700::1111"),
            ("https://dns.google/dns-query",)))
        self.assertEqual((await self.store.get_account(a)).config, account.config)
        for bad in (AccountConfig(upstream_do53=("1.1.1",)),
                    AccountConfig(upstream_doh=("http://dns.google",)),
                    AccountConfig(search_domain="not a domain")):
            await self.fails(InvalidRecord, self.store.update_account(a, config=bad))
        self.assertEqual((await self.store.get_account(a)).config, account.config)

    async def test_delete_account_removes_everything(self) -> None:
        """Deleting an account removes its rows and announces its tokens."""
        notes: list[str] = []
        await self.store.listen(TOKEN_DELETED, notes.append)
        w = await self.world("acme")
        other = await self.world("other")
        await self.store.delete_account(w.account_id)
        await self.fails(NotFound, self.store.get_account(w.account_id))
        self.assertEqual(await self.store.list_devices(w.account_id), [])
        await self.eventually(lambda: len(notes) == 2)
        self.assertEqual(sorted(notes), sorted([w.token.id, w.gateway_token.id]))
        self.assertEqual(len(await self.store.list_devices(other.account_id)), 2)

    # -- actors, providers, identities -------------------------------------------------
    async def test_actor_rules(self) -> None:
        """Actor types are checked and emails are unique per account."""
        a = (await self.store.create_account("acme", "Acme")).account.id
        actor = await self.store.create_actor(a, "account_user", "Ann", "ann@acme.test")
        self.assertEqual(await self.store.get_actor(a, actor.id), actor)
        self.assertTrue(actor.is_user)
        await self.fails(InvalidRecord, self.store.create_actor(a, "superuser", "x"))
        await self.fails(InvalidRecord, self.store.create_actor(a, "account_user", "x", "nope"))
        await self.fails(Conflict, self.store.create_actor(a, "account_user", "B", "ANN@acme.test"))
        b = (await self.store.create_account("beta", "Beta")).account.id
        await self.store.create_actor(b, "account_user", "Ann", "ann@acme.test")

    async def test_disabling_actor_deletes_its_tokens(self) -> None:
        """A disabled actor loses its client tokens (announced) and its policies."""
        notes: list[str] = []
        await self.store.listen(TOKEN_DELETED, notes.append)
        w = await self.world("acme")
        actor = await self.store.set_actor_disabled(w.account_id, w.user.id, True)
        self.assertEqual(actor.disabled_at, START)
        await self.fails(NotFound, self.store.get_token(w.account_id, w.token.id))
        await self.store.get_token(w.account_id, w.gateway_token.id)
        await self.eventually(lambda: notes == [w.token.id])
        self.assertEqual(await self.store.list_policies_for_actor(w.account_id, w.user.id), [])
        actor = await self.store.set_actor_disabled(w.account_id, w.user.id, False)
        self.assertIsNone(actor.disabled_at)

    async def test_delete_actor_cascades(self) -> None:
        """Deleting an actor removes its identities, memberships, devices and tokens."""
        notes: list[str] = []
        await self.store.listen(TOKEN_DELETED, notes.append)
        w = await self.world("acme")
        await self.store.delete_actor(w.account_id, w.user.id)
        self.assertEqual(await self.store.list_memberships(w.account_id), [])
        self.assertEqual(await self.store.list_identities(w.account_id), [])
        self.assertEqual(
            [d.type for d in await self.store.list_devices(w.account_id)], ["gateway"])
        await self.eventually(lambda: notes == [w.token.id])

    async def test_auth_provider_lifetime(self) -> None:
        """Providers default to 7-day client sessions; bad lifetimes are refused."""
        a = (await self.store.create_account("acme", "Acme")).account.id
        provider = await self.store.create_auth_provider(a, "oidc", "IdP")
        self.assertEqual(provider.client_session_lifetime_secs, 7 * 86400)
        provider = await self.store.update_auth_provider(
            a, provider.id, config={"client_session_lifetime_secs": 3600})
        self.assertEqual(provider.client_session_lifetime_secs, 3600)
        for bad in (0, "3600", 10**9):
            await self.fails(InvalidRecord, self.store.update_auth_provider(
                a, provider.id, config={"client_session_lifetime_secs": bad}))
        await self.fails(InvalidRecord, self.store.create_auth_provider(a, "saml", "x"))

    async def test_disabling_provider_deletes_its_tokens(self) -> None:
        """Client tokens issued through a disabled provider are deleted."""
        notes: list[str] = []
        await self.store.listen(TOKEN_DELETED, notes.append)
        w = await self.world("acme")
        await self.store.set_auth_provider_disabled(w.account_id, w.provider.id, True)
        await self.fails(NotFound, self.store.get_token(w.account_id, w.token.id))
        await self.eventually(lambda: notes == [w.token.id])
        await self.fails(InvalidRecord, self.store.create_token(
            w.account_id, "client", secret_salt="s", secret_hash="h", actor_id=w.user.id,
            auth_provider_id=w.provider.id, expires_at=START + 60))

    async def test_identity_unique_per_provider(self) -> None:
        """(provider, provider_identifier) identifies one identity."""
        w = await self.world("acme")
        await self.fails(Conflict, self.store.create_identity(
            w.account_id, w.service.id, w.provider.id, "sub-1"))
        found = await self.store.find_identity(w.account_id, w.provider.id, "sub-1")
        self.assertEqual(found, w.identity)
        await self.store.delete_identity(w.account_id, w.identity.id)
        await self.fails(NotFound, self.store.find_identity(w.account_id, w.provider.id, "sub-1"))

    # -- groups and memberships --------------------------------------------------------
    async def test_everyone_is_managed(self) -> None:
        """Everyone cannot be deleted or given explicit members."""
        w = await self.world("acme")
        everyone = w.created.everyone_group.id
        await self.fails(InvalidRecord, self.store.delete_group(w.account_id, everyone))
        await self.fails(InvalidRecord, self.store.add_membership(w.account_id, everyone,
                                                                  w.user.id))
        await self.fails(Conflict, self.store.add_membership(w.account_id, w.group.id,
                                                             w.user.id))
        await self.store.delete_group(w.account_id, w.group.id)
        self.assertEqual(await self.store.list_memberships(w.account_id), [])
        self.assertEqual(await self.store.list_policies(w.account_id), [])

    async def test_policies_for_actor(self) -> None:
        """Users get Everyone's policies implicitly; service accounts only explicit ones."""
        w = await self.world("acme")
        a = w.account_id
        public = await self.store.create_resource(a, "dns", "*.example.com", "web", w.site.id)
        everyone_policy = await self.store.create_policy(a, w.created.everyone_group.id,
                                                         public.id)
        grants = await self.store.list_policies_for_actor(a, w.user.id)
        self.assertEqual(
            sorted((g.policy.id, g.membership_id) for g in grants),
            sorted([(w.policy.id, w.membership.id), (everyone_policy.id, None)]))
        self.assertEqual(await self.store.list_policies_for_actor(a, w.service.id), [])
        await self.store.add_membership(a, w.group.id, w.service.id)
        self.assertEqual(
            [g.policy.id for g in await self.store.list_policies_for_actor(a, w.service.id)],
            [w.policy.id])
        await self.store.set_policy_disabled(a, w.policy.id, True)
        self.assertEqual(await self.store.list_policies_for_actor(a, w.service.id), [])

    # -- resources and policies --------------------------------------------------------
    async def test_resource_addresses_normalised(self) -> None:
        """Addresses are validated and normalised; dns resources default to dual stack."""
        w = await self.world("acme")
        a, site = w.account_id, w.site.id
        cidr = await self.store.create_resource(a, "cidr", "10.2.3.4/24", "c", site)
        self.assertEqual((cidr.address, cidr.ip_stack), ("10.2.3.0/24", None))
        ip = await self.store.create_resource(a, "ip", "2001:DB8::01", "i", site)
        self.assertEqual(ip.address, "2001:db8::1")
        dns = await self.store.create_resource(a, "dns", "**.Corp.Example", "d", site)
        self.assertEqual((dns.address, dns.ip_stack), ("**.corp.example", "dual"))
        internet = await self.store.create_resource(a, "internet", None, "Internet", site)
        self.assertIsNone(internet.address)
        await self.fails(Conflict, self.store.create_resource(a, "internet", None, "I2", site))
        for type_, address, stack in (("cidr", "10.0.0.0/33", None), ("ip", "10.0.0.0/8", None),
                                      ("dns", "*.*", None), ("cidr", "0.0.0.0/0", None),
                                      ("cidr", "10.0.0.0/8", "dual"), ("dns", "a.com", "v4"),
                                      ("tunnel", "10.0.0.0/8", None)):
            await self.fails(InvalidRecord, self.store.create_resource(
                a, type_, address, "bad", site, ip_stack=stack))
        self.assertEqual(len(await self.store.list_resources(a)), 5)

    async def test_resource_filters(self) -> None:
        """Filters are stored normalised; malformed ones are refused."""
        w = await self.world("acme")
        resource = await self.store.create_resource(
            w.account_id, "cidr", "10.9.0.0/16", "f", w.site.id,
            filters=[{"protocol": "tcp", "ports": ["443", "80"]}, {"protocol": "icmp"}])
        self.assertEqual(resource.filters, [
            {"protocol": "tcp", "ports": ["80", "443"]}, {"protocol": "icmp", "ports": []}])
        for bad in ([{"protocol": "sctp"}], [{"protocol": "tcp", "ports": ["0"]}],
                    [{"protocol": "tcp", "ports": ["1-10", "5"]}],
                    [{"protocol": "icmp", "ports": ["1"]}]):
            await self.fails(InvalidRecord, self.store.create_resource(
                w.account_id, "cidr", "10.8.0.0/16", "f", w.site.id, filters=bad))

    async def test_update_resource(self) -> None:
        """Only the given fields change, and they are validated like on create."""
        w = await self.world("acme")
        other_site = await self.store.create_site(w.account_id, "DC2")
        updated = await self.store.update_resource(
            w.account_id, w.resource.id, name="renamed", site_id=other_site.id,
            filters=[{"protocol": "udp", "ports": ["53"]}])
        self.assertEqual((updated.name, updated.site_id, updated.address),
                         ("renamed", other_site.id, w.resource.address))
        await self.fails(InvalidRecord, self.store.update_resource(
            w.account_id, w.resource.id, address="nonsense/99"))
        self.assertEqual(await self.store.get_resource(w.account_id, w.resource.id), updated)

    async def test_policy_conditions(self) -> None:
        """Conditions are validated by the policy package and stored normalised."""
        w = await self.world("acme")
        other = await self.store.create_resource(w.account_id, "ip", "10.5.5.5", "x", w.site.id)
        policy = await self.store.create_policy(
            w.account_id, w.group.id, other.id,
            conditions=[NINE_TO_FIVE, {"property": "remote_ip", "operator": "is_in_cidr",
                                       "values": ["192.0.2.7/24"]}],
            description="office hours")
        self.assertEqual(policy.conditions[1]["values"], ["192.0.2.0/24"])
        self.assertEqual(await self.store.get_policy(w.account_id, policy.id), policy)
        bad_window = dict(NINE_TO_FIVE, values=["M/25:00-26:00/UTC"])
        await self.fails(InvalidRecord, self.store.update_policy(
            w.account_id, policy.id, conditions=[bad_window]))
        await self.fails(InvalidRecord, self.store.create_policy(
            w.account_id, w.created.everyone_group.id, other.id,
            conditions=[{"property": "moon_phase", "operator": "is", "values": ["full"]}]))
        await self.fails(Conflict, self.store.create_policy(w.account_id, w.group.id, other.id))
        updated = await self.store.update_policy(w.account_id, policy.id, description=None)
        self.assertEqual((updated.description, updated.conditions),
                         (None, policy.conditions))

    async def test_delete_resource_cascades(self) -> None:
        """Deleting a resource removes its policies and authorizations."""
        w = await self.world("acme")
        await self.store.delete_resource(w.account_id, w.resource.id)
        self.assertEqual(await self.store.list_policies(w.account_id), [])
        self.assertEqual(await self.store.list_policy_authorizations(w.account_id), [])

    async def test_delete_site_deletes_gateway_tokens(self) -> None:
        """A deleted site takes its resources, gateways and (announced) gateway tokens."""
        notes: list[str] = []
        await self.store.listen(TOKEN_DELETED, notes.append)
        w = await self.world("acme")
        await self.store.delete_site(w.account_id, w.site.id)
        self.assertEqual(await self.store.list_resources(w.account_id), [])
        self.assertEqual(await self.store.list_devices(w.account_id, type="gateway"), [])
        await self.eventually(lambda: notes == [w.gateway_token.id])
        await self.store.get_token(w.account_id, w.token.id)

    # -- devices -----------------------------------------------------------------------
    async def test_new_device_gets_addresses_and_psk(self) -> None:
        """A new device gets a 32-byte psk_base and tunnel addresses from the pools."""
        w = await self.world("acme")
        self.assertEqual(len(w.client.psk_base), 32)
        self.assertNotEqual(w.client.psk_base, w.gateway.psk_base)
        for device in (w.client, w.gateway):
            self.assertTrue(addresses.in_pool(addresses.TUNNEL_IPV4, device.ipv4))
            self.assertTrue(addresses.in_pool(addresses.TUNNEL_IPV6, device.ipv6))
        self.assertEqual(w.client.last_seen_at, START)

    async def test_upsert_keeps_identity(self) -> None:
        """A known device keeps id, addresses and psk_base; last-seen facts are updated."""
        w = await self.world("acme")
        self.clock.advance(60)
        again = await self.store.upsert_device(
            w.account_id, "client", "c1", name="renamed", public_key=KEY_B, actor_id=w.user.id,
            remote_ip="2001:DB8::1", user_agent="Linux/6 headless-client/1.5.12", version="1.5.12")
        self.assertEqual((again.id, again.ipv4, again.ipv6, again.psk_base),
                         (w.client.id, w.client.ipv4, w.client.ipv6, w.client.psk_base))
        self.assertEqual((again.name, again.public_key, again.last_seen_remote_ip,
                          again.last_seen_version, again.last_seen_at),
                         ("renamed", KEY_B, "2001:db8::1", "1.5.12", START + 60))
        self.assertEqual(len(await self.store.list_devices(w.account_id)), 2)

    async def test_device_rules(self) -> None:
        """Clients need an actor, gateways a site; a client id is bound to its actor."""
        w = await self.world("acme")
        a = w.account_id
        await self.fails(Conflict, self.store.upsert_device(
            a, "client", "c1", name="x", public_key=KEY_A, actor_id=w.service.id))
        await self.fails(InvalidRecord, self.store.upsert_device(
            a, "client", "c2", name="x", public_key=KEY_A, site_id=w.site.id))
        await self.fails(InvalidRecord, self.store.upsert_device(
            a, "gateway", "g2", name="x", public_key=KEY_A))
        for key in ("short", "A" * 44, "!" * 43 + "="):
            await self.fails(InvalidRecord, self.store.upsert_device(
                a, "gateway", "g2", name="x", public_key=key, site_id=w.site.id))
        await self.fails(InvalidRecord, self.store.upsert_device(
            a, "gateway", "g2", name="x", public_key=KEY_A, site_id=w.site.id,
            remote_ip="not-an-ip"))
        found = await self.store.find_device(a, "gateway", "g1")
        self.assertEqual(found, w.gateway)
        verified = await self.store.set_device_verified(a, w.client.id, True)
        self.assertEqual(verified.verified_at, START)

    async def test_tunnel_addresses_unique(self) -> None:
        """Two hundred devices of one account never share a tunnel address."""
        a = (await self.store.create_account("acme", "Acme")).account.id
        actor = await self.store.create_actor(a, "service_account", "bot")
        devices = [await self.store.upsert_device(a, "client", f"d{i}", name="d",
                                                  public_key=KEY_A, actor_id=actor.id)
                   for i in range(200)]
        self.assertEqual(len({d.ipv4 for d in devices}), 200)
        self.assertEqual(len({d.ipv6 for d in devices}), 200)

    async def test_linear_probe_on_collision(self) -> None:
        """With the same random start every time, probing hands out the next free address."""
        store = await self.make_store(randbelow=lambda n: 0)
        a = (await store.create_account("acme", "Acme")).account.id
        b = (await store.create_account("beta", "Beta")).account.id
        actor = await store.create_actor(a, "service_account", "bot")
        devices = [await store.upsert_device(a, "client", f"d{i}", name="d", public_key=KEY_A,
                                             actor_id=actor.id) for i in range(70)]
        self.assertEqual(
            [d.ipv4 for d in devices],
            [str(ipaddress.ip_address("100.64.0.1") + i) for i in range(70)])
        self.assertEqual(devices[69].ipv6, "fd00:2021:1111::46")
        other = await store.create_actor(b, "service_account", "bot")
        first_b = await store.upsert_device(b, "client", "d0", name="d", public_key=KEY_A,
                                            actor_id=other.id)
        self.assertEqual(first_b.ipv4, "100.64.0.1")

    # -- tokens ------------------------------------------------------------------------
    async def test_token_rules(self) -> None:
        """Token rows need the right owner for their type and a future expiry."""
        w = await self.world("acme")
        a = w.account_id
        for account, type_, kw in (
            (a, "relay", {}),
            (None, "client", {"actor_id": w.user.id, "expires_at": START + 60}),
            (a, "client", {"actor_id": w.user.id}),
            (a, "client", {"actor_id": w.user.id, "expires_at": START - 1}),
            (a, "gateway", {}),
            (a, "gateway", {"site_id": w.site.id, "actor_id": w.user.id}),
            (a, "api", {}),
            (a, "browser", {}),
        ):
            await self.fails(InvalidRecord, self.store.create_token(
                account, type_, secret_salt="s", secret_hash="h", **kw))

    async def test_relay_tokens_are_global(self) -> None:
        """Relay tokens have no account and are reached only with account_id=None."""
        w = await self.world("acme")
        relay = await self.store.create_token(None, "relay", secret_salt="s", secret_hash="h")
        self.assertIsNone(relay.account_id)
        self.assertEqual(await self.store.get_token(None, relay.id), relay)
        self.assertEqual(await self.store.list_tokens(None), [relay])
        await self.fails(NotFound, self.store.get_token(w.account_id, relay.id))
        await self.fails(NotFound, self.store.get_token(None, w.token.id))
        await self.fails(NotFound, self.store.delete_token(None, w.token.id))
        await self.store.delete_token(None, relay.id)
        self.assertEqual(await self.store.list_tokens(None), [])

    async def test_mark_token_used(self) -> None:
        """Using a token stamps when and from where."""
        w = await self.world("acme")
        self.clock.advance(5)
        token = await self.store.mark_token_used(w.account_id, w.token.id, "198.51.100.7")
        self.assertEqual((token.last_used_at, token.last_used_remote_ip),
                         (START + 5, "198.51.100.7"))

    async def test_delete_expired_tokens(self) -> None:
        """The sweep deletes expired tokens only, and announces each."""
        notes: list[str] = []
        await self.store.listen(TOKEN_DELETED, notes.append)
        w = await self.world("acme")
        self.assertEqual(await self.store.delete_expired_tokens(), 0)
        self.clock.advance(3600)
        self.assertEqual(await self.store.delete_expired_tokens(), 1)
        await self.eventually(lambda: notes == [w.token.id])
        await self.store.get_token(w.account_id, w.gateway_token.id)

    # -- policy authorizations ---------------------------------------------------------
    async def test_authorizations(self) -> None:
        """Authorizations are listed per device and swept once expired."""
        w = await self.world("acme")
        a = w.account_id
        self.assertEqual(
            await self.store.list_policy_authorizations(a, device_id=w.gateway.id),
            [w.authorization])
        self.assertEqual(
            await self.store.get_policy_authorization(a, w.authorization.id), w.authorization)
        self.assertEqual(await self.store.delete_expired_policy_authorizations(), 0)
        self.clock.advance(600)
        self.assertEqual(await self.store.delete_expired_policy_authorizations(), 1)
        self.assertEqual(await self.store.list_policy_authorizations(a), [])

    async def test_authorization_parts_must_agree(self) -> None:
        """Policy, resource, devices and membership of an authorization must fit together."""
        w = await self.world("acme")
        a = w.account_id
        other = await self.store.create_resource(a, "ip", "10.7.7.7", "o", w.site.id)
        valid = dict(
            token_id=w.token.id, policy_id=w.policy.id, initiating_device_id=w.client.id,
            receiving_device_id=w.gateway.id, resource_id=w.resource.id)
        site2 = await self.store.create_site(a, "DC2")
        gw2 = await self.store.upsert_device(a, "gateway", "g2", name="g", public_key=KEY_B,
                                             site_id=site2.id)
        other_group = await self.store.create_group(a, "Other")
        stranger = await self.store.add_membership(a, other_group.id, w.user.id)
        for change in ({"resource_id": other.id}, {"initiating_device_id": w.gateway.id},
                       {"receiving_device_id": gw2.id}, {"membership_id": stranger.id}):
            await self.fails(InvalidRecord, self.store.create_policy_authorization(
                a, **{**valid, **change}))
        await self.store.create_policy_authorization(a, **valid)
        self.assertEqual(len(await self.store.list_policy_authorizations(a)), 2)

    # -- isolation ---------------------------------------------------------------------
    async def test_ids_from_another_account_are_not_found(self) -> None:
        """Every scoped read and write refuses account B's ids given with account A."""
        a = await self.world("alpha")
        b = await self.world("beta")
        A = a.account_id
        reads: list[tuple[str, tuple[Any, ...]]] = [
            ("get_actor", (A, b.user.id)), ("get_auth_provider", (A, b.provider.id)),
            ("get_identity", (A, b.identity.id)), ("get_group", (A, b.group.id)),
            ("get_membership", (A, b.membership.id)), ("get_site", (A, b.site.id)),
            ("get_resource", (A, b.resource.id)), ("get_policy", (A, b.policy.id)),
            ("get_device", (A, b.client.id)), ("get_token", (A, b.token.id)),
            ("get_policy_authorization", (A, b.authorization.id)),
            ("find_identity", (A, b.provider.id, "sub-1")),
            ("get_device", (A, b.gateway.id)),
            ("list_policies_for_actor", (A, b.user.id)),
        ]
        writes: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
            ("set_actor_disabled", (A, b.user.id, True), {}),
            ("delete_actor", (A, b.user.id), {}),
            ("update_auth_provider", (A, b.provider.id), {"name": "x"}),
            ("set_auth_provider_disabled", (A, b.provider.id, True), {}),
            ("delete_auth_provider", (A, b.provider.id), {}),
            ("delete_identity", (A, b.identity.id), {}),
            ("create_identity", (A, b.user.id, a.provider.id, "new"), {}),
            ("create_identity", (A, a.user.id, b.provider.id, "new"), {}),
            ("delete_group", (A, b.group.id), {}),
            ("add_membership", (A, b.group.id, a.user.id), {}),
            ("add_membership", (A, a.group.id, b.service.id), {}),
            ("delete_membership", (A, b.membership.id), {}),
            ("delete_site", (A, b.site.id), {}),
            ("create_resource", (A, "ip", "10.3.3.3", "x", b.site.id), {}),
            ("update_resource", (A, b.resource.id), {"name": "x"}),
            ("update_resource", (A, a.resource.id), {"site_id": b.site.id}),
            ("delete_resource", (A, b.resource.id), {}),
            ("create_policy", (A, a.group.id, b.resource.id), {}),
            ("create_policy", (A, b.group.id, a.resource.id), {}),
            ("update_policy", (A, b.policy.id), {"description": "x"}),
            ("set_policy_disabled", (A, b.policy.id, True), {}),
            ("delete_policy", (A, b.policy.id), {}),
            ("upsert_device", (A, "client", "new"),
             {"name": "x", "public_key": KEY_A, "actor_id": b.user.id}),
            ("upsert_device", (A, "gateway", "new"),
             {"name": "x", "public_key": KEY_A, "site_id": b.site.id}),
            ("set_device_verified", (A, b.client.id, True), {}),
            ("delete_device", (A, b.client.id), {}),
            ("create_token", (A, "client"), {"secret_salt": "s", "secret_hash": "h",
                                             "actor_id": b.user.id, "expires_at": START + 60}),
            ("create_token", (A, "gateway"), {"secret_salt": "s", "secret_hash": "h",
                                              "site_id": b.site.id}),
            ("mark_token_used", (A, b.token.id), {}),
            ("delete_token", (A, b.token.id), {}),
            ("delete_token", (A, b.gateway_token.id), {}),
            ("delete_policy_authorization", (A, b.authorization.id), {}),
        ]
        auth = dict(token_id=a.token.id, policy_id=a.policy.id,
                    initiating_device_id=a.client.id, receiving_device_id=a.gateway.id,
                    resource_id=a.resource.id, membership_id=a.membership.id)
        for field, foreign in (("token_id", b.token.id), ("policy_id", b.policy.id),
                               ("initiating_device_id", b.client.id),
                               ("receiving_device_id", b.gateway.id),
                               ("resource_id", b.resource.id),
                               ("membership_id", b.membership.id)):
            writes.append(("create_policy_authorization", (A,), {**auth, field: foreign}))
        for name, args in reads:
            await self.fails(NotFound, getattr(self.store, name)(*args))
        for name, args, kw in writes:
            error = await self.fails(NotFound, getattr(self.store, name)(*args, **kw))
            self.assertIn(error.kind, (
                "actor", "auth provider", "identity", "group", "membership", "site",
                "resource", "policy", "device", "token", "policy authorization"), name)
        await self.assert_world_intact(b)
        await self.assert_world_intact(a)

    async def assert_world_intact(self, w: World) -> None:
        s, a = self.store, w.account_id
        self.assertEqual(await s.get_actor(a, w.user.id), w.user)
        self.assertEqual(await s.get_auth_provider(a, w.provider.id), w.provider)
        self.assertEqual(await s.get_identity(a, w.identity.id), w.identity)
        self.assertEqual(await s.get_group(a, w.group.id), w.group)
        self.assertEqual(await s.get_membership(a, w.membership.id), w.membership)
        self.assertEqual(await s.get_site(a, w.site.id), w.site)
        self.assertEqual(await s.get_resource(a, w.resource.id), w.resource)
        self.assertEqual(await s.get_policy(a, w.policy.id), w.policy)
        self.assertEqual(await s.get_device(a, w.client.id), w.client)
        self.assertEqual(await s.get_device(a, w.gateway.id), w.gateway)
        self.assertEqual(await s.get_token(a, w.token.id), w.token)
        self.assertEqual(await s.get_token(a, w.gateway_token.id), w.gateway_token)
        self.assertEqual(
            await s.get_policy_authorization(a, w.authorization.id), w.authorization)

    async def test_lists_are_scoped(self) -> None:
        """Every list of account A holds only A's rows."""
        a = await self.world("alpha")
        b = await self.world("beta")
        for name in ("list_actors", "list_auth_providers", "list_identities", "list_groups",
                     "list_memberships", "list_sites", "list_resources", "list_policies",
                     "list_devices", "list_tokens", "list_policy_authorizations"):
            for w in (a, b):
                rows = await getattr(self.store, name)(w.account_id)
                self.assertTrue(rows, name)
                self.assertEqual({r.account_id for r in rows}, {w.account_id}, name)

    # -- notifications -----------------------------------------------------------------
    async def test_changes_announced_on_commit(self) -> None:
        """Each write announces op, table, account and id on the changes channel."""
        notes: list[str] = []
        await self.store.listen(CHANGES, notes.append)
        created = await self.store.create_account("acme", "Acme")
        a = created.account.id
        site = await self.store.create_site(a, "HQ")
        await self.store.delete_site(a, site.id)
        await self.eventually(lambda: len(notes) == 5)
        decoded = [json.loads(n) for n in notes]
        self.assertEqual(
            [(d["op"], d["table"]) for d in decoded],
            [("insert", "accounts"), ("insert", "groups"), ("insert", "auth_providers"),
             ("insert", "sites"), ("delete", "sites")])
        self.assertEqual(decoded[3], {"op": "insert", "table": "sites",
                                      "account_id": a, "id": site.id})

    async def test_listen_notify_unlisten(self) -> None:
        """notify reaches every listener of the channel until it unlistens."""
        first: list[str] = []
        second: list[str] = []
        await self.store.listen("custom_channel", first.append)
        await self.store.listen("custom_channel", second.append)
        await self.store.notify("custom_channel", "one")
        await self.eventually(lambda: first == ["one"] and second == ["one"])
        await self.store.unlisten("custom_channel", first.append)
        await self.store.notify("custom_channel", "two")
        await self.eventually(lambda: second == ["one", "two"])
        self.assertEqual(first, ["one"])
        self.assertRaises(ValueError, self.store.listen, "Bad-Name;", first.append)
