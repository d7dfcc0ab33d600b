"""The portal as real processes on loopback: relays, round trips, two nodes, revocation, nginx.

Every process is ``twistd -n firezone-portal`` / ``firezone-relay`` (or nginx)
started by the test, and every change an admin makes goes through
``firezone-ctl`` in its own process.  Clients and gateways are scripted
WebSocket clients in the test process (:class:`PhoenixClient`), each bound to
its own loopback source address where a token connects more than once: the
portal admits one connect per second per (remote IP, token).

SQLite is the default store, and its notifications stay inside the process
that made the change, so everything where ``firezone-ctl`` changes something
under a running portal, or two portals share the rows, runs on a throwaway
PostgreSQL cluster (``tests/portal/pgcluster.py``) and is skipped, with the
reason, where that cannot run (binaries missing, not root).  Processes are
stopped by PID in each test's cleanups (and at exit, whatever happens); the
cluster is removed at exit.
"""

from __future__ import annotations

import atexit
import datetime
import http.client
import ipaddress
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from firezone.credentials import long_term_key, turn_salt
from firezone.wire.phoenix import MAX_FRAME_BYTES
from firezone.wire.stun import (
    ErrorCode,
    Message,
    MessageClass,
    Method,
    Nonce,
    Realm,
    RequestedTransport,
    Username,
    XorRelayedAddress,
)
from tests.lab.portal_process import (
    CLIENT_UA,
    GATEWAY_UA,
    OP_BINARY,
    OP_TEXT,
    Ctl,
    PhoenixClient,
    PortalProcess,
    Refused,
    Timeout,
    World,
    clone_postgres,
    clone_sqlite,
    free_tcp_port,
    populate,
    public_key,
    spawn,
    start_portal,
    start_relay,
)
from tests.portal import pgcluster

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NGINX_EXAMPLE = PROJECT_ROOT / "etc" / "nginx" / "firezone-portal.conf"

# -- worlds: built once per test run, copied for each test ------------------------------------

_templates: dict[str, World] = {}
_template_root = Path(tempfile.mkdtemp(prefix="fz-portal-worlds-"))
atexit.register(shutil.rmtree, _template_root, True)
_copies = iter(range(1, 1 << 30))


def sqlite_world(test: SynchronousTestCase) -> World:
    """A private copy of the SQLite world (``populate``)."""
    template = _templates.get("sqlite")
    if template is None:
        data_dir = _template_root / "sqlite"
        template = populate(Ctl(f"sqlite:///{data_dir / 'portal.db'}", data_dir))
        _templates["sqlite"] = template
    return clone_sqlite(template, Path(test.mktemp()).resolve() / "data")


def postgres_world(test: SynchronousTestCase) -> World:
    """A private copy of the PostgreSQL world; skips the test where no cluster can run."""
    reason = pgcluster.unavailable_reason()
    if reason is not None:
        raise SkipTest(reason)
    cluster = pgcluster.shared_cluster()
    template = _templates.get("postgresql")
    if template is None:
        dsn = cluster.create_database()
        template = populate(Ctl(dsn, _template_root / "postgresql"))
        _templates["postgresql"] = template
    name = f"w{os.getpid()}_{next(_copies)}"
    world = clone_postgres(template, cluster.dsn(), name, Path(test.mktemp()).resolve() / "data")
    test.addCleanup(cluster.drop_database, world.database)
    return world


# -- scripted peers -----------------------------------------------------------------------------


class _Peers:
    """Starts processes and scripted peers for one test and cleans them all up."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.test = test
        self.workdir = Path(test.mktemp()).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._sources = iter(range(2, 250))

    def source(self) -> str:
        """A fresh loopback source address (the connect limit is per remote IP and token)."""
        return f"127.0.0.{next(self._sources)}"

    def portal(self, world: World, name: str = "portal") -> PortalProcess:
        portal = start_portal(self.workdir, world.database, world.data_dir, name=name)
        self.test.addCleanup(portal.process.stop)
        return portal

    def connect(self, port: int, role: str, token: str, external_id: str,
                key: str | None = None, **kw: Any) -> PhoenixClient:
        user_agent = GATEWAY_UA if role == "gateway" else CLIENT_UA
        query = {"external_id": external_id, "name": external_id,
                 "public_key": key or public_key()}
        kw.setdefault("source", self.source())
        peer = PhoenixClient.connect(port, role, token, query, user_agent, **kw)
        self.test.addCleanup(peer.close)
        return peer

    def joined(self, port: int, role: str, token: str, external_id: str,
               key: str | None = None, **kw: Any) -> tuple[PhoenixClient, dict[str, Any]]:
        """Connected, joined, and its ``init`` payload."""
        peer = self.connect(port, role, token, external_id, key, **kw)
        reply = peer.join()
        self.test.assertEqual(reply["status"], "ok", reply)
        return peer, peer.event("init")["payload"]


def _round_trip(test: SynchronousTestCase, client: PhoenixClient, gateway: PhoenixClient,
                resource_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """request_authorization -> create_authorization -> authorization_created (both ways)."""
    deadline = time.monotonic() + 10
    while True:
        client.push("request_authorization",
                    {"resource_id": resource_id, "connected_gateway_ids": []})
        try:
            create = gateway.event("create_authorization", timeout=2)["payload"]
            break
        except Timeout:
            # A gateway on another node is known there only once its announcement arrived.
            failed = client.event("authorization_creation_failed", timeout=1)["payload"]
            test.assertEqual(failed["reason"], "offline", failed)
            if time.monotonic() > deadline:
                test.fail("the gateway never became available to the client's node")
    reply = gateway.call("authorization_created", {"ref": create["ref"]})
    test.assertEqual(reply["status"], "ok", reply)
    created = client.event("authorization_created")["payload"]
    return create, created


def _turn_allocate(port: int, username: str, password: str) -> Message:
    """Allocate on our relay with long-term credentials, as a TURN client does
    (unauthenticated request -> 401 with NONCE -> signed request); the final answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        sock.send(Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12),
                          [RequestedTransport(17)]).encode())
        challenge = Message.decode(sock.recv(2048))
        nonce, realm = challenge.get(Nonce), challenge.get(Realm)
        assert nonce is not None and realm is not None, challenge
        request = Message(Method.ALLOCATE, MessageClass.REQUEST, os.urandom(12), [
            RequestedTransport(17), Username(username), Realm(realm.value), Nonce(nonce.value),
        ])
        sock.send(request.encode(integrity_key=long_term_key(username, realm.value, password)))
        return Message.decode(sock.recv(2048))


# -- a: relays ----------------------------------------------------------------------------------


class RelayProcessTests(SynchronousTestCase):
    """A relay process joins a portal process (REFERENCE 1.5) and clients get it (2.5)."""

    def test_relay_is_offered_with_working_credentials_and_withdrawn_when_stopped(self) -> None:
        """The relay shows up in a client's relays with TURN credentials the relay itself
        accepts for an Allocate (and refuses when altered); stopping it sends
        ``relays_presence`` with its id disconnected."""
        peers = _Peers(self)
        world = sqlite_world(self)
        portal = peers.portal(world)
        early, init = peers.joined(portal.port, "client", world.client_token, "early")
        self.assertEqual(init["relays"], [])

        relay = start_relay(peers.workdir, portal.api_url, world.relay_token)
        self.addCleanup(relay.process.stop)
        # "fewer than 2 relays are cached and some are online" -> relays_presence.
        presence = early.event("relays_presence", timeout=5)["payload"]
        self.assertEqual(presence["disconnected_ids"], [])
        [announced] = presence["connected"]

        key = public_key()
        late, init = peers.joined(portal.port, "client", world.client_token, "late", key)
        [view] = init["relays"]
        self.assertEqual(view["id"], announced["id"])
        self.assertEqual((view["type"], view["addr"]), ("turn", f"127.0.0.1:{relay.port}"))
        # REFERENCE 2.5: username "<expires_unix>:<salt>", salt = b64nopad(sha256(public key)).
        tokens = world.ctl().rows("tokens", world.account)
        [client_token] = [t for t in tokens if t["type"] == "client"]
        self.assertEqual(view["expires_at"], int(client_token["expires_at"]))
        self.assertEqual(view["username"], f"{view['expires_at']}:{turn_salt(key)}")

        granted = _turn_allocate(relay.port, view["username"], view["password"])
        self.assertEqual(granted.message_class, MessageClass.SUCCESS, granted)
        relayed = granted.get(XorRelayedAddress)
        assert relayed is not None
        self.assertEqual(relayed.ip, "127.0.0.1")
        self.assertTrue(40000 <= relayed.port <= 40999, relayed)
        password = view["password"]
        altered = password[:-1] + ("B" if password.endswith("A") else "A")
        refused = _turn_allocate(relay.port, view["username"], altered)
        self.assertEqual(refused.message_class, MessageClass.ERROR)
        error = refused.get(ErrorCode)
        assert error is not None
        self.assertEqual(error.code, 401)

        relay.process.stop()
        for client in (early, late):
            gone = client.event("relays_presence", timeout=5)["payload"]
            self.assertEqual(gone["disconnected_ids"], [view["id"]])
            self.assertEqual(gone["connected"], [])


# -- b: the authorization round trip -----------------------------------------------------------


class RoundTripProcessTests(SynchronousTestCase):
    """request_authorization -> create_authorization -> authorization_created (REFERENCE 1.3)."""

    def test_round_trip_through_a_portal_process(self) -> None:
        """The gateway gets the client, its key and the PSK; the client gets the gateway's
        key, the same PSK and ICE credentials; the authorization row is stored."""
        peers = _Peers(self)
        world = sqlite_world(self)
        portal = peers.portal(world)
        gateway_key, client_key = public_key(), public_key()
        gateway, _ = peers.joined(portal.port, "gateway", world.gateway_token, "gw-1", gateway_key)
        client, init = peers.joined(portal.port, "client", world.client_token, "laptop",
                                    client_key)
        self.assertEqual([r["id"] for r in init["resources"]], [world.resource_id])

        create, created = _round_trip(self, client, gateway, world.resource_id)
        self.assertEqual(create["resource"]["id"], world.resource_id)
        self.assertEqual(create["resource"]["address"], "10.0.0.0/16")
        self.assertEqual(create["client"]["public_key"], client_key)
        self.assertEqual(created["resource_id"], world.resource_id)
        self.assertEqual(created["gateway_public_key"], gateway_key)
        self.assertEqual(created["site_id"], world.site_id)
        self.assertEqual(created["preshared_key"], create["client"]["preshared_key"])
        self.assertEqual(created["client_ice_credentials"], create["client_ice_credentials"])
        self.assertEqual(created["gateway_ice_credentials"], create["gateway_ice_credentials"])

        devices = {d["external_id"]: d for d in world.ctl().rows("devices", world.account)}
        self.assertEqual(created["gateway_id"], devices["gw-1"]["id"])
        self.assertEqual(create["client"]["id"], devices["laptop"]["id"])
        [row] = world.ctl().rows("authorizations", world.account)
        self.assertEqual((row["initiating_device_id"], row["receiving_device_id"]),
                         (devices["laptop"]["id"], devices["gw-1"]["id"]))


# -- c: two nodes on one PostgreSQL --------------------------------------------------------------


class TwoPortalProcessesTests(SynchronousTestCase):
    """Two portal processes share one PostgreSQL database (REFERENCE 1.6)."""

    def test_delivery_across_nodes_and_changes_from_ctl(self) -> None:
        """Client on node A, gateway on node B: the round trip and ICE candidates cross the
        nodes; a resource deleted with firezone-ctl reaches the client on A and makes B's
        gateway reject the pair."""
        world = postgres_world(self)
        peers = _Peers(self)
        node_a = peers.portal(world, "portal-a")
        node_b = peers.portal(world, "portal-b")
        gateway, _ = peers.joined(node_b.port, "gateway", world.gateway_token, "gw-1")
        client, init = peers.joined(node_a.port, "client", world.client_token, "laptop")
        self.assertEqual([r["id"] for r in init["resources"]], [world.resource_id])

        create, created = _round_trip(self, client, gateway, world.resource_id)
        self.assertEqual(created["preshared_key"], create["client"]["preshared_key"])
        candidate = "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"
        client.push("new_gateway_ice_candidates",
                    {"gateway_id": created["gateway_id"], "candidates": [candidate]})
        ice = gateway.event("ice_candidates")["payload"]
        self.assertEqual(ice, {"client_id": create["client"]["id"], "candidates": [candidate]})

        world.ctl().run("delete", "resource", world.resource_id, "--account", world.account)
        self.assertEqual(client.event("resource_deleted")["payload"], world.resource_id)
        rejected = gateway.event("reject_access")["payload"]
        self.assertEqual(rejected, {"client_id": create["client"]["id"],
                                    "resource_id": world.resource_id})


# -- d: revocation latency ------------------------------------------------------------------------


def _arrival(peer: PhoenixClient, event: str, out: dict[str, Any], timeout: float) -> None:
    """Wait for ``event`` on ``peer`` in a thread; record the frame and the wall-clock time."""
    try:
        frame = peer.event(event, timeout=timeout)
        out[event] = (time.time(), frame["payload"])
    except BaseException as e:  # reported by the test thread
        out[event] = e


class RevocationProcessTests(SynchronousTestCase):
    """Deleting a policy withdraws access at once (REFERENCE 1.4 ``reject_access``)."""

    BOUND = 1.0

    def test_policy_deletion_reaches_gateway_and_client_within_a_second(self) -> None:
        """From the moment firezone-ctl (already imported) starts deleting the policy, the
        gateway has ``reject_access`` and the client ``resource_deleted`` within 1 s."""
        world = postgres_world(self)
        peers = _Peers(self)
        portal = peers.portal(world)
        gateway, _ = peers.joined(portal.port, "gateway", world.gateway_token, "gw-1")
        client, _ = peers.joined(portal.port, "client", world.client_token, "laptop")
        create, _ = _round_trip(self, client, gateway, world.resource_id)

        arrivals: dict[str, Any] = {}
        waiters = [
            threading.Thread(target=_arrival, args=(gateway, "reject_access", arrivals, 20)),
            threading.Thread(target=_arrival, args=(client, "resource_deleted", arrivals, 20)),
        ]
        for waiter in waiters:
            waiter.start()
        try:
            change = world.ctl().timed("delete", "policy", world.policy_id,
                                       "--account", world.account)
        finally:
            for waiter in waiters:
                waiter.join(30)
        self.assertEqual(change.returncode, 0, change.stderr)
        for event in ("reject_access", "resource_deleted"):
            if isinstance(arrivals.get(event), BaseException):
                raise arrivals[event]
        at, rejected = arrivals["reject_access"]
        self.assertEqual(rejected, {"client_id": create["client"]["id"],
                                    "resource_id": world.resource_id})
        self.assertGreater(at, change.started)
        self.assertLessEqual(at - change.started, self.BOUND)
        at, deleted = arrivals["resource_deleted"]
        self.assertEqual(deleted, world.resource_id)
        self.assertGreater(at, change.started)
        self.assertLessEqual(at - change.started, self.BOUND)


# -- e: hostile input ------------------------------------------------------------------------


class HostileInputProcessTests(SynchronousTestCase):
    """Malformed frames, wrong topics, forged refs and foreign ids fail safely."""

    def setUp(self) -> None:
        self.peers = _Peers(self)
        self.world = sqlite_world(self)
        self.portal = self.peers.portal(self.world)

    def client(self, external_id: str = "laptop") -> tuple[PhoenixClient, dict[str, Any]]:
        return self.peers.joined(self.portal.port, "client", self.world.client_token,
                                 external_id)

    def test_malformed_frames_are_dropped_and_the_socket_stays_up(self) -> None:
        """Frames that are not Phoenix messages get no answer and break nothing: the same
        socket still answers heartbeats and requests, and other sockets are unaffected."""
        client, _ = self.client()
        for text in ("not json", "[]", "null", '{"topic":"client"}',
                     '{"topic":"client","event":"phx_join","payload":null,"ref":-1}',
                     '{"topic":5,"event":"heartbeat","payload":{},"ref":900}',
                     '{"topic":"phoenix","event":"heartbeat","payload":NaN,"ref":901}',
                     "{" * 100_000):
            client.send_text(text)
        client.send_frame(OP_BINARY, b"\x00\xff\x00")
        reply = client.heartbeat()
        self.assertEqual(reply["status"], "ok")
        self.assertEqual([f["event"] for f in client.inbox], [])
        answer = client.call("no_such_event", {})
        self.assertEqual(answer, {"status": "error", "response": {"reason": "unknown_message"}})
        _other, init = self.client("other-laptop")
        self.assertEqual([r["id"] for r in init["resources"]], [self.world.resource_id])
        self.assertTrue(self.portal.process.alive())

    def test_oversized_frame_closes_only_that_socket(self) -> None:
        """A frame above 1 MiB closes that socket with 1009 (message too big); the portal
        keeps serving everyone else."""
        bystander, _ = self.client("bystander")
        client, _ = self.client()
        client.send_frame(OP_TEXT, b" " * (MAX_FRAME_BYTES + 1))
        self.assertEqual(client.wait_closed(), 1009)
        self.assertEqual(bystander.heartbeat()["status"], "ok")
        fresh, _ = self.client("fresh")
        self.assertEqual(fresh.heartbeat()["status"], "ok")

    def test_wrong_topics_are_unmatched(self) -> None:
        """A client socket cannot join the gateway or relay topic, nor push on a topic it
        has not joined: each gets ``unmatched topic`` (connlib rejoins on that)."""
        client = self.peers.connect(self.portal.port, "client", self.world.client_token, "lap")
        unmatched = {"status": "error", "response": {"reason": "unmatched topic"}}
        self.assertEqual(client.call("request_authorization",
                                     {"resource_id": self.world.resource_id}), unmatched)
        self.assertEqual(client.call("phx_join", None, topic="gateway"), unmatched)
        self.assertEqual(client.call("phx_join", {"stamp_secret": "00" * 32}, topic="relay"),
                         unmatched)
        self.assertEqual(client.join()["status"], "ok")
        client.event("init")
        self.assertEqual(client.call("request_authorization",
                                     {"resource_id": self.world.resource_id}, topic="gateway"),
                         unmatched)
        self.assertEqual(client.call("phx_join", None, topic="room:lobby"), unmatched)

    def test_forged_ref_is_refused_and_the_genuine_one_works(self) -> None:
        """A gateway answering with an altered ``ref`` gets ``invalid_ref`` and the client
        hears nothing; the ref as issued then completes the authorization."""
        gateway, _ = self.peers.joined(self.portal.port, "gateway", self.world.gateway_token,
                                       "gw-1")
        client, _ = self.client()
        client.push("request_authorization",
                    {"resource_id": self.world.resource_id, "connected_gateway_ids": []})
        ref = gateway.event("create_authorization")["payload"]["ref"]
        for forged in (ref[:-2] + ("AA" if not ref.endswith("AA") else "BB"),
                       "SFMyNTY." + ref.split(".", 1)[-1], "", 42, {"ref": ref}):
            reply = gateway.call("authorization_created", {"ref": forged})
            self.assertEqual(reply, {"status": "error", "response": {"reason": "invalid_ref"}},
                             forged)
        self.assertEqual(client.heartbeat()["status"], "ok")
        self.assertEqual([f["event"] for f in client.inbox], [])
        self.assertEqual(gateway.call("authorization_created", {"ref": ref})["status"], "ok")
        created = client.event("authorization_created")["payload"]
        self.assertEqual(created["resource_id"], self.world.resource_id)

    def test_another_accounts_resource_is_not_found(self) -> None:
        """A resource id of another account is ``not_found`` and reaches no gateway."""
        gateway, _ = self.peers.joined(self.portal.port, "gateway", self.world.gateway_token,
                                       "gw-1")
        client, _ = self.client()
        for resource_id in (self.world.other_resource_id, "not-a-uuid"):
            client.push("request_authorization",
                        {"resource_id": resource_id, "connected_gateway_ids": []})
            failed = client.event("authorization_creation_failed")["payload"]
            self.assertEqual(failed, {"resource_id": resource_id, "reason": "not_found"})
        client.push("request_authorization",
                    {"resource_id": self.world.resource_id, "connected_gateway_ids": []})
        create = gateway.event("create_authorization")["payload"]
        self.assertEqual(create["resource"]["id"], self.world.resource_id)
        self.assertEqual([f["event"] for f in gateway.inbox], [])

    def test_connects_are_limited_per_remote_ip_and_token(self) -> None:
        """A second connect with the same token from the same address within a second is
        503 ``rate_limit`` with ``Retry-After``; from another address it is admitted."""
        source = self.peers.source()
        first = self.peers.connect(self.portal.port, "client", self.world.client_token, "one",
                                   source=source)
        with self.assertRaises(Refused) as refused:
            self.peers.connect(self.portal.port, "client", self.world.client_token, "two",
                               source=source)
        self.assertEqual((refused.exception.status, refused.exception.code), (503, "rate_limit"))
        self.assertEqual(refused.exception.response.headers.get("retry-after"), "1")
        second = self.peers.connect(self.portal.port, "client", self.world.client_token, "two")
        for peer in (first, second):
            self.assertEqual(peer.join()["status"], "ok")


class TokenReuseProcessTests(SynchronousTestCase):
    """A deleted token ends its sockets and opens no new ones (REFERENCE 6.1)."""

    def test_deleted_tokens_disconnect_and_are_refused(self) -> None:
        """Deleting the client and gateway tokens with firezone-ctl pushes ``disconnect``
        ``token_expired`` to their sockets, which close; reconnecting with them is 401
        ``invalid_token``."""
        world = postgres_world(self)
        peers = _Peers(self)
        portal = peers.portal(world)
        ctl = world.ctl()
        tokens = {t["type"]: t["id"] for t in ctl.rows("tokens", world.account)}
        for role, token, external_id in (("client", world.client_token, "laptop"),
                                         ("gateway", world.gateway_token, "gw-1")):
            peer, _ = peers.joined(portal.port, role, token, external_id)
            ctl.run("delete", "token", tokens[role], "--account", world.account)
            self.assertEqual(peer.event("disconnect")["payload"], {"reason": "token_expired"})
            peer.wait_closed()
            with self.assertRaises(Refused) as refused:
                peers.connect(portal.port, role, token, external_id)
            self.assertEqual((refused.exception.status, refused.exception.code),
                             (401, "invalid_token"))
        self.assertTrue(portal.process.alive())


# -- nginx in front of two nodes ------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` / 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "portal.crt", directory / "portal.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def nginx_site(example: str, substitutions: dict[str, str]) -> str:
    """The example configuration with its placeholders replaced; each must be present."""
    for placeholder, value in substitutions.items():
        if placeholder not in example:
            raise AssertionError(f"{placeholder!r} is not in {NGINX_EXAMPLE}")
        example = example.replace(placeholder, value)
    return example


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class NginxProcessTests(SynchronousTestCase):
    """``etc/nginx/firezone-portal.conf`` in front of two portal processes."""

    def test_round_trip_through_nginx_over_two_nodes(self) -> None:
        """With the example configuration (only addresses, ports and certificate paths
        replaced), a gateway and a client reach different nodes through nginx over TLS
        and complete the authorization round trip; plain HTTP is redirected to HTTPS."""
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists(
            "/usr/sbin/nginx") else None)
        if nginx is None:
            raise SkipTest("nginx is not installed (apt-get install nginx; `make deps`)")
        world = postgres_world(self)
        peers = _Peers(self)
        node_a = peers.portal(world, "portal-a")
        node_b = peers.portal(world, "portal-b")

        root = peers.workdir / "nginx"
        root.mkdir()
        cert, key = _self_signed(root)
        tls_port, http_port = free_tcp_port(), free_tcp_port()
        site = nginx_site(NGINX_EXAMPLE.read_text(), {
            "server 10.0.0.11:13000": f"server 127.0.0.1:{node_a.port}",
            "server 10.0.0.12:13000": f"server 127.0.0.1:{node_b.port}",
            "listen 443 ssl;": f"listen 127.0.0.1:{tls_port} ssl;",
            "listen [::]:443 ssl;": "",
            "listen 80;": f"listen 127.0.0.1:{http_port};",
            "listen [::]:80;": "",
            "/etc/ssl/firezone/portal.example.com.crt": str(cert),
            "/etc/ssl/firezone/portal.example.com.key": str(key),
        })
        (root / "firezone-portal.conf").write_text(site)
        for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (root / temp).mkdir()
        (root / "nginx.conf").write_text(
            "worker_processes 1;\n"
            f"error_log {root / 'error.log'} info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            + "".join(f"  {t}_temp_path {root / t};\n"
                      for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + "  log_format upstreams '$remote_addr $upstream_addr $status';\n"
            f"  access_log {root / 'access.log'} upstreams;\n"
            f"  include {root / 'firezone-portal.conf'};\n"
            "}\n"
        )
        process = spawn([nginx, "-c", str(root / "nginx.conf"), "-p", str(root),
                         "-e", str(root / "error.log"),
                         "-g", f"daemon off; pid {root / 'nginx.pid'};"], "nginx", peers.workdir)
        self.addCleanup(process.stop)
        _wait(lambda: _accepts(tls_port) or not process.alive(), 10, "nginx to listen")
        self.assertTrue(process.alive(), (root / "error.log").read_text()
                        if (root / "error.log").exists() else process.log())

        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
        connection.request("GET", "/client/v2/websocket", headers={"Host": "localhost"})
        response = connection.getresponse()
        self.assertEqual(response.status, 301)
        self.assertEqual(response.getheader("location"), "https://localhost/client/v2/websocket")
        connection.close()

        tls = ssl.create_default_context(cafile=str(cert))
        gateway, _ = peers.joined(tls_port, "gateway", world.gateway_token, "gw-1", tls=tls,
                                  server_name="localhost")
        client, init = peers.joined(tls_port, "client", world.client_token, "laptop", tls=tls,
                                    server_name="localhost")
        self.assertEqual([r["id"] for r in init["resources"]], [world.resource_id])
        create, created = _round_trip(self, client, gateway, world.resource_id)
        self.assertEqual(created["preshared_key"], create["client"]["preshared_key"])

        # nginx logs a proxied WebSocket when it ends: one per node (least_conn).
        gateway.close()
        client.close()
        log = root / "access.log"
        pattern = re.compile(r" 127\.0\.0\.1:(\d+) 101$")

        def upstreams() -> set[int]:
            text = log.read_text() if log.exists() else ""
            return {int(m.group(1)) for line in text.splitlines()
                    if (m := pattern.search(line))}

        _wait(lambda: len(upstreams()) == 2, 10, "both WebSockets in nginx's access log")
        self.assertEqual(upstreams(), {node_a.port, node_b.port})
