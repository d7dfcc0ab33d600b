"""The pure parts of the XDP offload: map layout, mirroring, config, headers, error lines.

No BPF here: the maps are :class:`DictMap`, a small real implementation of the
``ByteMap`` interface the BPF maps are used through.  The program itself is
tested in ``tests/lab/test_relay_xdp.py``.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from unittest import mock

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.relay.commands import (
    Address,
    Command,
    CreateAllocation,
    CreateChannelBinding,
    DeleteChannelBinding,
    FreeAllocation,
    SendMessage,
)
from firezone.relay.ebpf.headers import HeadersMissing, ensure_kernel_source
from firezone.relay.ebpf.loader import (
    XdpOffloadError,
    compile_error,
    import_bcc,
    verifier_error,
)
from firezone.relay.ebpf.maps import (
    BINDING_MAPS,
    BindingMaps,
    MapKeyError,
    RelayConfig,
    counters_from,
    entries_for,
    pack_client_channel,
    pack_port_peer,
    unpack_client_channel,
    unpack_port_peer,
)
from firezone.relay.ebpf.offload import AttachMode
from firezone.relay.server import ChannelInfo
from firezone.wire.stun import (
    AdditionalAddressFamily,
    AddressFamily,
    Attribute,
    Lifetime,
    Method,
    RequestedAddressFamily,
)
from tests.relay.test_server import IP4, IP6, NOW, Client, make_server


class DictMap:
    """A hash map of bytes, as the kernel's: fixed key and value sizes per map."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self.data.items()))


def fake_maps() -> dict[str, DictMap]:
    return {name: DictMap() for name in BINDING_MAPS}


def contents(maps: dict[str, DictMap]) -> dict[str, dict[bytes, bytes]]:
    return {name: dict(m.data) for name, m in maps.items()}


CLIENT4: Address = ("192.0.2.10", 50000)
PEER4: Address = ("198.51.100.7", 40000)
CLIENT6: Address = ("2001:db8::10", 50002)
PEER6: Address = ("2001:db8::77", 40002)

ipv4s = st.builds(lambda n: str(IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6s = st.builds(lambda n: str(IPv6Address(n)), st.integers(2**32, 2**128 - 1)).filter(
    lambda ip: IPv6Address(ip).ipv4_mapped is None)
ports = st.integers(0, 0xFFFF)


class PackingTests(SynchronousTestCase):
    """Keys and values are the reference's big-endian byte arrays (REFERENCE.md 3.4)."""

    def test_client_and_channel_v4_layout(self) -> None:
        """ClientAndChannelV4 is ip[4] | port[2] | channel[2], big-endian."""
        self.assertEqual(pack_client_channel(("192.0.2.10", 0x1234), 0x4001),
                         bytes([192, 0, 2, 10, 0x12, 0x34, 0x40, 0x01]))

    def test_port_and_peer_v4_layout(self) -> None:
        """PortAndPeerV4 is peer ip[4] | allocation_port[2] | peer_port[2]."""
        self.assertEqual(pack_port_peer(("198.51.100.7", 3480), 50000),
                         bytes([198, 51, 100, 7]) + struct.pack(">HH", 50000, 3480))

    def test_v6_layout(self) -> None:
        """The V6 variants carry ip[16] and are 20 bytes."""
        key = pack_client_channel(CLIENT6, 0x7FFF)
        self.assertEqual(key, IPv6Address(CLIENT6[0]).packed + struct.pack(">HH", 50002, 0x7FFF))

    def test_ipv4_mapped_is_ipv4(self) -> None:
        """An IPv4-mapped IPv6 client arrives as IPv4 on the wire, so its key is 8 bytes."""
        self.assertEqual(pack_client_channel(("::ffff:192.0.2.10", 50000), 0x4000),
                         pack_client_channel(CLIENT4, 0x4000))

    @settings(max_examples=200)
    @given(st.one_of(ipv4s, ipv6s), ports, ports)
    def test_round_trip(self, ip: str, port: int, other: int) -> None:
        """Unpacking a packed key gives back the address and number."""
        self.assertEqual(unpack_client_channel(pack_client_channel((ip, port), other)),
                         ((ip, port), other))
        self.assertEqual(unpack_port_peer(pack_port_peer((ip, port), other)), ((ip, port), other))

    @settings(max_examples=200)
    @given(st.binary(max_size=40))
    def test_arbitrary_bytes(self, data: bytes) -> None:
        """Anything but 8 or 20 bytes is MapKeyError; 8 or 20 bytes always unpack."""
        if len(data) in (8, 20):
            unpack_client_channel(data)
            unpack_port_peer(data)
        else:
            self.assertRaises(MapKeyError, unpack_client_channel, data)
            self.assertRaises(MapKeyError, unpack_port_peer, data)

    def test_bad_inputs(self) -> None:
        """Non-addresses and numbers beyond 16 bits are MapKeyError, not struct errors."""
        self.assertRaises(MapKeyError, pack_client_channel, ("relay.example", 1), 0x4000)
        self.assertRaises(MapKeyError, pack_client_channel, CLIENT4, 0x10000)
        self.assertRaises(MapKeyError, pack_port_peer, PEER4, -1)

    def test_mixed_families_are_not_offloaded(self) -> None:
        """A v4 client bound to a v6 peer has no entries: userspace relays it."""
        self.assertEqual(entries_for(CLIENT4, 0x4000, PEER6, 50000), {})
        self.assertEqual(set(entries_for(CLIENT6, 0x4000, PEER6, 50000)),
                         {"CHAN_TO_UDP_66", "UDP_TO_CHAN_66"})


class BindingMapsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.maps = fake_maps()
        self.bindings = BindingMaps(self.maps)

    def test_create_writes_both_directions(self) -> None:
        """A binding becomes CHAN_TO_UDP[(client, chan)] and UDP_TO_CHAN[(peer, port)]."""
        self.bindings.apply(CreateChannelBinding(CLIENT4, 0x4000, PEER4, 50000))
        forward = pack_client_channel(CLIENT4, 0x4000)
        backward = pack_port_peer(PEER4, 50000)
        self.assertEqual(contents(self.maps), {
            "CHAN_TO_UDP_44": {forward: backward}, "UDP_TO_CHAN_44": {backward: forward},
            "CHAN_TO_UDP_66": {}, "UDP_TO_CHAN_66": {}})

    def test_delete_removes_both(self) -> None:
        """Delete undoes create; deleting again is harmless."""
        self.bindings.apply(CreateChannelBinding(CLIENT6, 0x4001, PEER6, 50001))
        for _ in range(2):
            self.bindings.apply(DeleteChannelBinding(CLIENT6, 0x4001, PEER6, 50001))
            self.assertEqual(self.bindings.entries(), dict.fromkeys(BINDING_MAPS, 0))

    def test_free_allocation_clears_its_port(self) -> None:
        """FreeAllocation removes entries left on that port and family, and only those."""
        keep = [CreateChannelBinding(CLIENT4, 0x4000, PEER4, 50001),
                CreateChannelBinding(CLIENT6, 0x4000, PEER6, 50000)]
        for command in [*keep, CreateChannelBinding(CLIENT4, 0x4001, PEER4, 50000),
                        CreateChannelBinding(("192.0.2.11", 1), 0x4000, ("198.51.100.9", 9),
                                             50000)]:
            self.bindings.apply(command)
        self.bindings.apply(FreeAllocation(50000, AddressFamily.V4))
        expected = fake_maps()
        for command in keep:
            BindingMaps(expected).apply(command)
        self.assertEqual(contents(self.maps), contents(expected))

    def test_other_commands_ignored(self) -> None:
        """Sending and socket commands do not touch the maps."""
        self.bindings.apply(SendMessage(b"x", CLIENT4))
        self.bindings.apply(CreateAllocation(50000, AddressFamily.V4))
        self.assertEqual(self.bindings.entries(), dict.fromkeys(BINDING_MAPS, 0))

    def test_reconcile(self) -> None:
        """Reconcile keeps bound channels, adds missing ones, drops the rest and unbound ones."""
        self.bindings.apply(CreateChannelBinding(CLIENT4, 0x4000, PEER4, 50000))
        self.bindings.apply(CreateChannelBinding(CLIENT4, 0x4002, ("198.51.100.8", 1), 50000))
        channels = [ChannelInfo(CLIENT4, 0x4000, PEER4, 50000, NOW, True),
                    ChannelInfo(CLIENT6, 0x4000, PEER6, 50001, NOW, True),
                    ChannelInfo(CLIENT4, 0x4003, ("198.51.100.9", 2), 50000, NOW, False)]
        self.bindings.reconcile(channels)
        expected = fake_maps()
        for c in channels[:2]:
            BindingMaps(expected).apply(CreateChannelBinding(c.client, c.channel, c.peer,
                                                             c.allocation_port))
        self.assertEqual(contents(self.maps), contents(expected))

    def test_all_maps_required(self) -> None:
        """A program without one of the four maps is refused up front."""
        maps = fake_maps()
        del maps["UDP_TO_CHAN_66"]
        self.assertRaises(ValueError, BindingMaps, maps)


# One step of the mirroring model: (operation, client index, argument).
steps = st.lists(st.tuples(
    st.sampled_from(["allocate", "bind", "refresh", "advance"]),
    st.integers(0, 2),
    st.integers(0, 5),
), max_size=25)

PEERS: list[Address] = [("198.51.100.7", 40000), ("198.51.100.8", 40001),
                        ("2001:db8::77", 40002), (str(IP4), 0)]


class MirroringTests(SynchronousTestCase):
    """Feeding the server's commands to the maps leaves exactly its bound channels there."""

    def expected(self, channels: list[ChannelInfo]) -> dict[str, dict[bytes, bytes]]:
        maps = fake_maps()
        BindingMaps(maps).reconcile(channels)
        return contents(maps)

    @settings(max_examples=100, deadline=None)
    @given(steps)
    @example([("allocate", 0, 0), ("refresh", 0, 3), ("bind", 0, 0), ("advance", 0, 5),
              ("advance", 0, 5), ("bind", 0, 1), ("advance", 0, 3), ("bind", 0, 0)])
    @example([("allocate", 0, 1), ("allocate", 1, 0), ("bind", 0, 3), ("bind", 1, 3),
              ("bind", 0, 2), ("refresh", 1, 0), ("refresh", 0, 0)])
    def test_commands_mirror_bound_channels(self, script: list[tuple[str, int, int]]) -> None:
        """After every step the maps equal the server's bound channels (same family only)."""
        server = make_server(ip6=IP6)
        clients = [Client(server, ("192.0.2.10", 50000), salt="a"),
                   Client(server, ("2001:db8::10", 50001), salt="b"),
                   Client(server, ("192.0.2.11", 50002), salt="c")]
        maps = fake_maps()
        bindings = BindingMaps(maps)
        now = NOW
        ports: dict[int, int] = {}

        def feed(commands: list[Command]) -> None:
            for command in commands:
                bindings.apply(command)

        for op, who, arg in script:
            client = clients[who]
            if op == "allocate":
                family: list[Attribute] = (
                    [AdditionalAddressFamily(2)] if arg % 2 else [RequestedAddressFamily(1)])
                _, commands = client.allocate(family, now)
                feed(commands)
                info = server.allocation_for(client.addr)
                if info is not None:
                    ports[who] = info.port
            elif op == "bind":
                peer = PEERS[arg % len(PEERS)]
                if peer[1] == 0:  # another allocation on this relay (hairpin)
                    other = ports.get((who + 1) % 3)
                    if other is None:
                        continue
                    peer = (peer[0], other)
                feed(client.bind(0x4000 + arg, peer, now)[1])
            elif op == "refresh":
                # Lifetime 0 deletes the allocation; 3600 lets channels expire before it.
                if client.nonce is None:
                    continue
                feed(client.call(Method.REFRESH, [Lifetime(0 if arg < 2 else 3600)], now)[1])
            else:
                now += 200.0 * arg + 100.0
                feed(server.handle_deadline(now))
            self.assertEqual(contents(maps), self.expected(list(server.channels())))
        bound = [c for c in server.channels() if c.bound]
        offloadable = [c for c in bound if (":" in c.client[0]) == (":" in c.peer[0])]
        self.assertEqual(sum(bindings.entries().values()), 2 * len(offloadable))


class CounterAndConfigTests(SynchronousTestCase):
    def test_counters_sum_cpus(self) -> None:
        """Per-CPU slots are summed: (packets, bytes) per direction."""
        self.assertEqual(counters_from([[1, 2], [100, 200], [3, 0], [30, 1]]),
                         {"to_peer": (3, 300), "to_client": (3, 31)})

    def test_config_layout(self) -> None:
        """struct relay_config: ip4[4], ip6[16], then four host-order u16."""
        config = RelayConfig(IPv4Address("198.18.2.2"), None, 3478, 49152, 65535, 1500)
        self.assertEqual(config.encode(), bytes([198, 18, 2, 2]) + bytes(16)
                         + struct.pack("=HHHH", 3478, 49152, 65535, 1500))
        self.assertEqual(len(RelayConfig(None, IPv6Address("2001:db8::1"), 3478, 1, 2, 9000)
                             .encode()), 28)

    def test_config_rejects_bad_ports(self) -> None:
        """A range whose low end is above its high end cannot be configured."""
        self.assertRaises(ValueError, RelayConfig(None, None, 3478, 50000, 49999, 1500).encode)
        self.assertRaises(ValueError, RelayConfig(None, None, 0, 1, 2, 1500).encode)


class AttachModeTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """driver and generic (any case) parse; anything else names the two choices."""
        self.assertIs(AttachMode.parse("Driver"), AttachMode.DRIVER)
        self.assertIs(AttachMode.parse(" generic"), AttachMode.GENERIC)
        self.assertEqual(AttachMode.GENERIC.flags, 1 << 1)  # XDP_FLAGS_SKB_MODE
        self.assertEqual(AttachMode.DRIVER.flags, 1 << 2)  # XDP_FLAGS_DRV_MODE
        error = self.assertRaises(ValueError, AttachMode.parse, "skb")
        self.assertEqual(str(error), "'skb' is not an attach mode: use driver or generic")


class HeadersTests(SynchronousTestCase):
    """The MACHINE.md workaround: a merged Debian header tree as BCC_KERNEL_SOURCE."""

    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp())
        self.modules = self.root / "modules"
        self.src = self.root / "src"
        self.cache = self.root / "cache"
        (self.modules / "6.18.0").mkdir(parents=True)
        patcher = mock.patch.dict(os.environ)
        patcher.start()
        self.addCleanup(patcher.stop)
        os.environ.pop("BCC_KERNEL_SOURCE", None)

    def debian_headers(self, version: str) -> None:
        arch = self.src / f"linux-headers-{version}-amd64"
        common = self.src / f"linux-headers-{version}-common"
        (arch / "include" / "generated").mkdir(parents=True)
        (arch / "include" / "generated" / "autoconf.h").write_text("arch")
        (common / "include" / "linux").mkdir(parents=True)
        (common / "include" / "linux" / "bpf.h").write_text("common")
        (common / "Makefile").write_text("common")
        (arch / "Makefile").write_text("arch")

    def ensure(self) -> Path | None:
        return ensure_kernel_source("6.18.0", self.modules, self.src, self.cache)

    def test_merged_tree(self) -> None:
        """The newest version's arch files overlay its common files; the env names the tree."""
        self.debian_headers("6.1.0-9")
        self.debian_headers("6.1.0-56")
        merged = self.ensure()
        assert merged is not None
        self.assertEqual(os.environ["BCC_KERNEL_SOURCE"], str(merged))
        self.assertIn("6.1.0-56", merged.name)
        self.assertEqual((merged / "include" / "linux" / "bpf.h").read_text(), "common")
        self.assertEqual((merged / "include" / "generated" / "autoconf.h").read_text(), "arch")
        self.assertEqual((merged / "Makefile").read_text(), "arch")
        os.environ.pop("BCC_KERNEL_SOURCE")
        self.assertEqual(self.ensure(), merged)  # reused, not rebuilt

    def test_not_needed(self) -> None:
        """A kernel with its own build tree, or a set BCC_KERNEL_SOURCE, is left alone."""
        (self.modules / "6.18.0" / "build").mkdir()
        self.assertIsNone(self.ensure())
        self.assertNotIn("BCC_KERNEL_SOURCE", os.environ)

    def test_missing(self) -> None:
        """No headers at all: one line naming the release and the package to install."""
        self.src.mkdir()
        error = self.assertRaises(HeadersMissing, self.ensure)
        self.assertIn("6.18.0", str(error))
        self.assertIn("linux-headers-amd64", str(error))


class LoaderMessageTests(SynchronousTestCase):
    """A failed load says why in one line."""

    VERIFIER_LOG = [
        "bpf: Failed to load program: Permission denied",
        "0: R1=ctx() R10=fp0",
        "; unsigned char *data = (void *)(long)ctx->data; @ main.c:15",
        "0: (61) r1 = *(u32 *)(r1 +0)          ; R1=pkt(r=0)",
        "; return data[100]; @ main.c:16",
        "1: (71) r0 = *(u8 *)(r1 +100)",
        "invalid access to packet, off=100 size=1, R1(id=0,off=100,r=0)",
        "R1 offset is outside of the packet",
        "processed 2 insns (limit 1000000) max_states_per_insn 0 total_states 0",
        "",
    ]

    def test_verifier_line(self) -> None:
        """The complaint after the last instruction, with the source line it came from."""
        self.assertEqual(verifier_error(self.VERIFIER_LOG),
                         "invalid access to packet, off=100 size=1, R1(id=0,off=100,r=0) "
                         "(at `return data[100];`)")

    def test_compile_line(self) -> None:
        """The first clang error, without BCC's /virtual/ prefix."""
        self.assertEqual(
            compile_error(["In file included from <built-in>:2:",
                           "/virtual/main.c:3:12: error: use of undeclared identifier 'x'",
                           "    return x;", "1 error generated."]),
            "main.c:3:12: error: use of undeclared identifier 'x'")

    def test_bcc_missing(self) -> None:
        """Without bcc anywhere the error names Debian's package."""
        with mock.patch.dict(sys.modules, {"bcc": None}):
            error = self.assertRaises(XdpOffloadError, import_bcc, Path("/nonexistent/bcc"))
        self.assertIn("python3-bpfcc", str(error))

    def test_bcc_from_debian_path(self) -> None:
        """When the venv cannot import bcc, the package is loaded from Debian's folder."""
        folder = Path(tempfile.mkdtemp()) / "bcc"
        folder.mkdir()
        (folder / "__init__.py").write_text("from .version import where\n")
        (folder / "version.py").write_text("where = 'debian'\n")
        saved = {k: v for k, v in sys.modules.items() if k == "bcc" or k.startswith("bcc.")}
        try:
            for name in saved:
                del sys.modules[name]
            with mock.patch("builtins.__import__", _refuse("bcc")):
                module = import_bcc(folder)
            self.assertEqual(module.where, "debian")
        finally:
            for name in [k for k in sys.modules if k == "bcc" or k.startswith("bcc.")]:
                del sys.modules[name]
            sys.modules.update(saved)


def _refuse(name: str):  # type: ignore[no-untyped-def]
    """An __import__ that fails for ``name`` only (as a venv without the .pth would)."""
    real = __import__

    def fake(module: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if module == name:
            raise ImportError(f"No module named {name!r}")
        return real(module, *args, **kwargs)

    return fake
