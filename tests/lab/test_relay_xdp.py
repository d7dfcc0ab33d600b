"""The relay's XDP offload against the real kernel.

Three layers, each needing root and BCC (they skip with the reason otherwise):

- the program, in this process, through ``BPF_PROG_TEST_RUN``: every rewrite is
  compared byte for byte with a frame built from scratch (so checksums, TTL, TOS,
  ID, MACs and lengths are all checked), and every packet that is not bound
  relayed data must come back ``XDP_PASS`` untouched;
- attaching: XdpOffload in a lab namespace, its one-line errors, and the link
  that dies with the process holding it;
- the relay as a process (``tests/lab/xdp_relay.py``) in a lab namespace, in
  generic and in native mode, with coturn's ``turnutils_uclient`` and
  ``turnutils_peer`` relaying through it.

Compiling takes seconds, so the program is loaded once for this module and each
relay lab is built once per attach mode (torn down at exit by the lab).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from firezone.relay.commands import Address, CreateChannelBinding, DeleteChannelBinding
from firezone.relay.ebpf import (
    XdpOffload,
    XdpOffloadError,
    XdpOffloadService,
    XdpProgram,
    syscall,
)
from firezone.relay.ebpf.maps import RelayConfig
from firezone.wire.stun import Lifetime, Method
from tests.lab import netlab
from tests.lab.netlab import Host, Lab, LabProcess
from tests.lab.relay_process import (
    STAMP_SECRET,
    credentials,
    lost_packets,
    metric_value,
    metrics,
    twistd,
)

# ------------------------------------------------------------------------------------------
# The program, loaded once
# ------------------------------------------------------------------------------------------

_program: XdpProgram | None = None
_program_error: str | None = None


def shared_program() -> XdpProgram:
    """The module's one loaded program; SkipTest with the reason if it cannot load."""
    global _program, _program_error
    if os.geteuid() != 0:
        raise SkipTest("XDP needs root (CAP_BPF, CAP_NET_ADMIN)")
    if _program is None and _program_error is None:
        try:
            _program = XdpProgram.load()
        except XdpOffloadError as e:
            _program_error = str(e)
    if _program is None:
        raise SkipTest(f"the XDP program cannot load here: {_program_error}")
    return _program


RELAY4, RELAY6 = "198.18.2.2", "2001:db8:2::2"
CLIENT4: Address = ("198.18.1.2", 40000)
CLIENT6: Address = ("2001:db8:1::2", 40000)
PEER4: Address = ("198.18.3.2", 3480)
PEER6: Address = ("2001:db8:3::2", 3480)
RELAY_MAC = bytes.fromhex("020000000002")
GATEWAY_MAC = bytes.fromhex("020000000001")
MTU = 1500


def config() -> RelayConfig:
    return RelayConfig(IPv4Address(RELAY4), IPv6Address(RELAY6), 3478, 49152, 65535, MTU)


# ------------------------------------------------------------------------------------------
# Frames built from scratch
# ------------------------------------------------------------------------------------------


def _ones_complement(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(src: Address, dst: Address, payload: bytes, *, ttl: int = 64, tos: int = 0,
          ident: int = 0x1234, frag: int = 0x4000, checksum: bool = True,
          options: bytes = b"", protocol: int = 17, flow: int = 0,
          src_mac: bytes = GATEWAY_MAC, dst_mac: bytes = RELAY_MAC) -> bytes:
    """An Ethernet frame with a UDP datagram, every checksum computed from scratch."""
    s, d = ip_address(src[0]), ip_address(dst[0])
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", src[1], dst[1], udp_len, 0) + payload
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, 17, udp_len)
    else:
        pseudo = s.packed + d.packed + struct.pack("!IxxxB", udp_len, 17)
    if checksum:
        udp = udp[:6] + struct.pack("!H", _ones_complement(pseudo + udp) or 0xFFFF) + udp[8:]
    if s.version == 4:
        ihl = 5 + len(options) // 4
        header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + udp_len, ident, frag,
                             ttl, protocol, 0, s.packed, d.packed) + options
        header = header[:10] + struct.pack("!H", _ones_complement(header)) + header[12:]
        ethertype = 0x0800
    else:
        header = struct.pack("!IHBB16s16s", (6 << 28) | (tos << 20) | flow, udp_len, protocol,
                             ttl, s.packed, d.packed)
        ethertype = 0x86DD
    return dst_mac + src_mac + struct.pack("!H", ethertype) + header + udp


def channel_data(channel: int, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("!HH", channel, len(data) if length is None else length) + data


def reply(src: Address, dst: Address, payload: bytes, **kw: object) -> bytes:
    """A frame the relay sends back to its gateway (addresses swapped at layer 2)."""
    return frame(src, dst, payload, src_mac=RELAY_MAC, dst_mac=GATEWAY_MAC, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# The program through BPF_PROG_TEST_RUN
# ------------------------------------------------------------------------------------------


class XdpProgramTests(SynchronousTestCase):
    """bpf/relay_xdp.c on single frames: relayed exactly as built from scratch, or passed."""

    def setUp(self) -> None:
        self.program = shared_program()
        self.program.clear()
        self.program.configure(config())
        self.addCleanup(self.program.clear)

    def bind(self, client: Address, channel: int, peer: Address, port: int) -> None:
        self.program.bindings.apply(CreateChannelBinding(client, channel, peer, port))

    def relays(self, sent: bytes, expected: bytes) -> None:
        action, out = self.program.test_run(sent)
        self.assertEqual(action, syscall.XDP_TX)
        self.assertEqual(out.hex(), expected.hex())

    def passes(self, sent: bytes) -> None:
        action, out = self.program.test_run(sent)
        self.assertEqual(action, syscall.XDP_PASS)
        self.assertEqual(out, sent)

    def test_client_to_peer_v4(self) -> None:
        """ChannelData loses its header and leaves from the allocation port to the peer."""
        self.bind(CLIENT4, 0x4000, PEER4, 50000)
        self.relays(
            frame(CLIENT4, (RELAY4, 3478), channel_data(0x4000, b"hello"), ttl=61, tos=0xB8,
                  ident=0xBEEF),
            reply((RELAY4, 50000), PEER4, b"hello", ttl=61, tos=0xB8, ident=0xBEEF))

    def test_peer_to_client_v4(self) -> None:
        """A peer datagram gains a ChannelData header and leaves from 3478 to the client."""
        self.bind(CLIENT4, 0x7FFF, PEER4, 65535)
        self.relays(frame(PEER4, (RELAY4, 65535), b"pong!", ttl=3, frag=0),
                    reply((RELAY4, 3478), CLIENT4, channel_data(0x7FFF, b"pong!"), ttl=3,
                          frag=0))

    def test_client_to_peer_v6(self) -> None:
        """The same for IPv6; traffic class, flow label and hop limit are kept."""
        self.bind(CLIENT6, 0x4001, PEER6, 50001)
        self.relays(frame(CLIENT6, (RELAY6, 3478), channel_data(0x4001, b"six"), tos=0x2E,
                          flow=0xABCDE, ttl=17),
                    reply((RELAY6, 50001), PEER6, b"six", tos=0x2E, flow=0xABCDE, ttl=17))

    def test_peer_to_client_v6(self) -> None:
        """IPv6 peer data becomes ChannelData to the client."""
        self.bind(CLIENT6, 0x4001, PEER6, 50001)
        self.relays(frame(PEER6, (RELAY6, 50001), b"back"),
                    reply((RELAY6, 3478), CLIENT6, channel_data(0x4001, b"back")))

    def test_hairpin(self) -> None:
        """A peer that is another allocation here: straight to that allocation's client."""
        other4, other6 = ("198.18.4.2", 41000), ("2001:db8:4::2", 41000)
        before = self.program.counters()
        for client, other, relay in ((CLIENT4, other4, RELAY4), (CLIENT6, other6, RELAY6)):
            self.bind(client, 0x4000, (relay, 50002), 50001)
            self.bind(other, 0x4123, (relay, 50001), 50002)
            self.relays(frame(client, (relay, 3478), channel_data(0x4000, b"to the other")),
                        reply((relay, 3478), other, channel_data(0x4123, b"to the other")))
        # Counted as the userspace relay counts a hairpin: once out to the "peer", once in.
        after = self.program.counters()
        for direction in ("to_peer", "to_client"):
            self.assertEqual(after[direction][0] - before[direction][0], 2)
            self.assertEqual(after[direction][1] - before[direction][1], 24)

    def test_hairpin_without_other_side_passes(self) -> None:
        """If the other allocation has no binding back, userspace decides."""
        self.bind(CLIENT4, 0x4000, (RELAY4, 50002), 50001)
        self.passes(frame(CLIENT4, (RELAY4, 3478), channel_data(0x4000, b"x")))

    def test_zero_udp_checksum_stays_zero_v4(self) -> None:
        """An IPv4 datagram without a UDP checksum is relayed without one."""
        self.bind(CLIENT4, 0x4000, PEER4, 50000)
        self.relays(frame(CLIENT4, (RELAY4, 3478), channel_data(0x4000, b"abc"), checksum=False),
                    reply((RELAY4, 50000), PEER4, b"abc", checksum=False))
        self.relays(frame(PEER4, (RELAY4, 50000), b"abc", checksum=False),
                    reply((RELAY4, 3478), CLIENT4, channel_data(0x4000, b"abc"),
                          checksum=False))

    def test_ethernet_padding_is_not_payload(self) -> None:
        """A minimum-size frame's padding stays padding: lengths come from the IP header."""
        self.bind(CLIENT4, 0x4000, PEER4, 50000)
        sent = frame(CLIENT4, (RELAY4, 3478), channel_data(0x4000, b"hi"))
        padded = sent + bytes(60 - len(sent))
        action, out = self.program.test_run(padded)
        self.assertEqual(action, syscall.XDP_TX)
        expected = reply((RELAY4, 50000), PEER4, b"hi")
        self.assertEqual(out[: len(expected)].hex(), expected.hex())
        self.assertEqual(len(out), len(padded) - 4)

    def test_counters(self) -> None:
        """Packets and payload bytes per direction, as the userspace relay counts them."""
        self.bind(CLIENT4, 0x4000, PEER4, 50000)
        before = self.program.counters()
        self.program.test_run(frame(CLIENT4, (RELAY4, 3478), channel_data(0x4000, b"12345")))
        self.program.test_run(frame(PEER4, (RELAY4, 50000), b"1234567"))
        self.program.test_run(frame(PEER4, (RELAY4, 50000), b""))
        after = self.program.counters()
        self.assertEqual(after["to_peer"], (before["to_peer"][0] + 1, before["to_peer"][1] + 5))
        self.assertEqual(after["to_client"],
                         (before["to_client"][0] + 2, before["to_client"][1] + 7))

    def test_not_relayed_data_passes_untouched(self) -> None:
        """Everything but bound relayed data goes to userspace unchanged (XDP_PASS)."""
        self.bind(CLIENT4, 0x4000, PEER4, 50000)
        self.bind(CLIENT6, 0x4000, PEER6, 50000)
        stun = bytes.fromhex("000100002112a442") + bytes(12)
        cases = {
            "STUN to the listen port": frame(CLIENT4, (RELAY4, 3478), stun),
            "unbound channel": frame(CLIENT4, (RELAY4, 3478), channel_data(0x4001, b"x")),
            "channel above 0x7FFF": frame(CLIENT4, (RELAY4, 3478), channel_data(0x8000, b"x")),
            "channel below 0x4000": frame(CLIENT4, (RELAY4, 3478), channel_data(0x3FFF, b"x")),
            "padded ChannelData": frame(CLIENT4, (RELAY4, 3478),
                                        channel_data(0x4000, b"abcde\0\0\0", length=5)),
            "length beyond the datagram": frame(CLIENT4, (RELAY4, 3478),
                                                channel_data(0x4000, b"ab", length=9)),
            "short ChannelData": frame(CLIENT4, (RELAY4, 3478), b"\x40\x00"),
            "IPv4 options": frame(CLIENT4, (RELAY4, 3478), channel_data(0x4000, b"x"),
                                  options=b"\x01\x01\x01\x00"),
            "source port 53": frame((CLIENT4[0], 53), (RELAY4, 3478), channel_data(0x4000, b"x")),
            "a fragment": frame(CLIENT4, (RELAY4, 3478), channel_data(0x4000, b"x"), frag=0x2000),
            "other port": frame(PEER4, (RELAY4, 4000), b"x"),
            "unknown peer": frame(("198.18.3.3", 3480), (RELAY4, 50000), b"x"),
            "other allocation port": frame(PEER4, (RELAY4, 50001), b"x"),
            "not UDP": frame(CLIENT4, (RELAY4, 3478), channel_data(0x4000, b"x"), protocol=6),
            "IPv6 without UDP checksum": frame(CLIENT6, (RELAY6, 3478),
                                               channel_data(0x4000, b"x"), checksum=False),
            "IPv6 extension header": frame(CLIENT6, (RELAY6, 3478), channel_data(0x4000, b"x"),
                                           protocol=0),
            "ARP": RELAY_MAC + GATEWAY_MAC + b"\x08\x06" + bytes(28),
            "too long for the MTU once prefixed": frame(PEER4, (RELAY4, 50000),
                                                       bytes(MTU - 28 - 3)),
        }
        truncated = frame(CLIENT4, (RELAY4, 3478), channel_data(0x4000, b"0123456789"))
        cases["truncated"] = truncated[:-4]
        before = self.program.counters()
        for name, sent in cases.items():
            action, out = self.program.test_run(sent)
            self.assertEqual((action, out), (syscall.XDP_PASS, sent), name)
        self.assertEqual(self.program.counters(), before)

    def test_longest_datagram_that_fits(self) -> None:
        """A peer datagram that fits the MTU with the 4-byte header is relayed."""
        self.bind(CLIENT4, 0x4000, PEER4, 50000)
        data = bytes(range(256)) * 6
        data = data[: MTU - 28 - 4]
        self.relays(frame(PEER4, (RELAY4, 50000), data),
                    reply((RELAY4, 3478), CLIENT4, channel_data(0x4000, data)))

    def test_deleted_binding_passes(self) -> None:
        """After DeleteChannelBinding the kernel relays nothing for that channel or peer."""
        self.bind(CLIENT4, 0x4000, PEER4, 50000)
        self.program.bindings.apply(DeleteChannelBinding(CLIENT4, 0x4000, PEER4, 50000))
        self.passes(frame(CLIENT4, (RELAY4, 3478), channel_data(0x4000, b"x")))
        self.passes(frame(PEER4, (RELAY4, 50000), b"x"))

    @settings(max_examples=200, deadline=None)
    @given(
        family=st.sampled_from([4, 6]),
        direction=st.sampled_from(["to_peer", "to_client", "hairpin"]),
        payload=st.binary(max_size=1400),
        ttl=st.integers(1, 255), tos=st.integers(0, 255), ident=st.integers(0, 0xFFFF),
        client_port=st.integers(1, 0xFFFF).filter(lambda p: p != 53),
        peer_port=st.integers(1, 0xFFFF).filter(lambda p: p != 53),
        ports=st.lists(st.integers(49152, 65535), min_size=2, max_size=2, unique=True),
        channels=st.lists(st.integers(0x4000, 0x7FFF), min_size=2, max_size=2),
        checksum=st.booleans(),
    )
    def test_any_datagram_relayed_exactly(
        self, family: int, direction: str, payload: bytes, ttl: int, tos: int, ident: int,
        client_port: int, peer_port: int, ports: list[int], channels: list[int],
        checksum: bool,
    ) -> None:
        """Any payload, ports, TTL, TOS and ID: the output equals the frame built from scratch."""
        self.program.clear()
        relay = RELAY4 if family == 4 else RELAY6
        client = (CLIENT4[0] if family == 4 else CLIENT6[0], client_port)
        peer = (PEER4[0] if family == 4 else PEER6[0], peer_port)
        checksum = checksum or family == 6
        kw: dict[str, Any] = {"ttl": ttl, "tos": tos, "ident": ident, "checksum": checksum}
        if direction == "hairpin":
            other = ("198.18.4.2" if family == 4 else "2001:db8:4::2", peer_port)
            self.bind(client, channels[0], (relay, ports[1]), ports[0])
            self.bind(other, channels[1], (relay, ports[0]), ports[1])
            self.relays(frame(client, (relay, 3478), channel_data(channels[0], payload), **kw),
                        reply((relay, 3478), other, channel_data(channels[1], payload), **kw))
            return
        self.bind(client, channels[0], peer, ports[0])
        if direction == "to_peer":
            self.relays(frame(client, (relay, 3478), channel_data(channels[0], payload), **kw),
                        reply((relay, ports[0]), peer, payload, **kw))
        else:
            self.relays(frame(peer, (relay, ports[0]), payload, **kw),
                        reply((relay, 3478), client, channel_data(channels[0], payload), **kw))


class ServerMirroringTests(SynchronousTestCase):
    """A TurnServer's commands, observed by XdpOffload, steer the real program."""

    def setUp(self) -> None:
        from tests.relay.test_server import Client, make_server

        self.program = shared_program()
        self.program.clear()
        self.program.configure(config())
        self.addCleanup(self.program.clear)
        self.server = make_server(ip4=IPv4Address(RELAY4))
        self.offload = XdpOffload("lo", "generic", IPv4Address(RELAY4), None,
                                  program=self.program)
        self.client = Client(self.server, CLIENT4)
        _, commands = self.client.allocate()
        self.port = self.client.relay_port()
        self.feed(commands)

    def feed(self, commands: list) -> None:  # type: ignore[type-arg]
        for command in commands:
            self.offload.observe(command)

    def ping(self) -> int:
        action, _ = self.program.test_run(
            frame(CLIENT4, (RELAY4, 3478), channel_data(0x4000, b"ping")))
        return action

    def test_bound_channel_relayed_until_deleted(self) -> None:
        """ChannelBind makes the kernel relay; Refresh 0 (allocation deleted) stops it."""
        self.assertEqual(self.ping(), syscall.XDP_PASS)
        self.feed(self.client.bind(0x4000, PEER4)[1])
        self.assertEqual(self.ping(), syscall.XDP_TX)
        self.feed(self.client.call(Method.REFRESH, [Lifetime(0)])[1])
        self.assertEqual(self.ping(), syscall.XDP_PASS)
        self.assertEqual(sum(self.offload.map_entries().values()), 0)

    def test_channel_expiry(self) -> None:
        """A binding that expires (600 s) is no longer relayed in the kernel."""
        from tests.relay.test_server import NOW

        self.feed(self.client.call(Method.REFRESH, [Lifetime(3600)])[1])
        self.feed(self.client.bind(0x4000, PEER4)[1])
        self.assertEqual(self.ping(), syscall.XDP_TX)
        self.feed(self.server.handle_deadline(NOW + 601))
        self.assertEqual(self.ping(), syscall.XDP_PASS)

    def test_reconcile_restores_the_maps(self) -> None:
        """reconcile(server) rewrites the maps from the server's channels."""
        self.client.bind(0x4000, PEER4)  # commands dropped: the maps missed this binding
        self.program.bindings.apply(CreateChannelBinding(("198.18.9.9", 1), 0x4000, PEER4, 50000))
        self.offload.reconcile(self.server)
        self.assertEqual(self.ping(), syscall.XDP_TX)
        self.assertEqual(self.offload.map_entries()["CHAN_TO_UDP_44"], 1)


# ------------------------------------------------------------------------------------------
# Attaching
# ------------------------------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def inside(host: Host) -> Iterator[None]:
    """Run this thread inside ``host``'s network namespace for a moment."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{host.ns}", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        yield
    finally:
        _libc.setns(own, _CLONE_NEWNET)
        os.close(own)
        os.close(target)


def xdp_state(host: Host, iface: str) -> str:
    """``prog/xdp ... name X`` and the mode flag from ``ip -d link show``."""
    out = host.sh(f"ip -d link show {iface}")
    modes = re.findall(r"\b(xdpgeneric|xdpdrv|xdp)\b", out)
    names = re.findall(r"prog/xdp id \d+ name (\S+)", out)
    return " ".join(modes[:1] + names)


class AttachTests(SynchronousTestCase):
    """XdpOffload attaches, detaches, and refuses in one line when it cannot."""

    def setUp(self) -> None:
        reason = netlab.unavailable_reason()
        if reason:
            raise SkipTest(reason)
        self.program = shared_program()
        self.lab = Lab("xdpattach")
        self.addCleanup(self.lab.teardown)
        self.host = self.lab.add_host("relay")
        self.lab.connect(self.host, self.lab.add_host("gw"), ["198.18.2.2/24"],
                         ["198.18.2.1/24"])

    def offload(self, iface: str = "eth0", mode: str = "generic") -> XdpOffload:
        return XdpOffload(iface, mode, IPv4Address(RELAY4), None, program=self.program)

    def test_attach_and_detach(self) -> None:
        """start() attaches relay_xdp in the asked mode; stop() detaches it."""
        offload = self.offload()
        with inside(self.host):
            offload.start()
        self.addCleanup(offload.stop)
        self.assertEqual(xdp_state(self.host, "eth0"), "xdpgeneric relay_xdp")
        offload.stop()
        self.assertEqual(xdp_state(self.host, "eth0"), "")

    def test_driver_mode_on_veth(self) -> None:
        """Native mode attaches on a veth."""
        offload = self.offload(mode="driver")
        with inside(self.host):
            offload.start()
        self.addCleanup(offload.stop)
        self.assertEqual(xdp_state(self.host, "eth0"), "xdp relay_xdp")

    def test_service(self) -> None:
        """The service attaches and mirrors the server's bindings on start, detaches on stop."""
        from tests.relay.test_server import Client, make_server

        server = make_server(ip4=IPv4Address(RELAY4))
        client = Client(server, CLIENT4)
        client.allocate()
        client.bind(0x4000, PEER4)
        service = XdpOffloadService(self.offload(), server)
        with inside(self.host):
            service.startService()
        self.addCleanup(service.offload.stop)
        self.assertEqual(xdp_state(self.host, "eth0"), "xdpgeneric relay_xdp")
        self.assertEqual(service.offload.map_entries()["UDP_TO_CHAN_44"], 1)
        service.stopService()
        self.assertEqual(xdp_state(self.host, "eth0"), "")
        self.assertEqual(sum(service.offload.map_entries().values()), 0)

    def test_missing_interface(self) -> None:
        """An interface that does not exist is named in the error."""
        with inside(self.host):
            error = self.assertRaises(XdpOffloadError, self.offload("eth9").start)
        self.assertEqual(str(error), "interface eth9 not found")

    def test_driver_mode_unsupported(self) -> None:
        """Loopback has no native XDP: the error says so and suggests generic mode."""
        with inside(self.host):
            error = self.assertRaises(XdpOffloadError, self.offload("lo", "driver").start)
        self.assertIn("cannot attach XDP to lo in driver mode", str(error))
        self.assertIn("try generic mode", str(error))
        self.assertEqual(xdp_state(self.host, "lo"), "")

    def test_second_program_refused(self) -> None:
        """An interface that already has an XDP program is not taken over."""
        first = self.offload()
        with inside(self.host):
            first.start()
            self.addCleanup(first.stop)
            error = self.assertRaises(XdpOffloadError, self.offload().start)
        self.assertIn("another XDP program is attached", str(error))
        self.assertEqual(xdp_state(self.host, "eth0"), "xdpgeneric relay_xdp")

    def test_link_dies_with_its_process(self) -> None:
        """A relay killed with SIGKILL leaves no XDP program behind (bpf_link, not netlink)."""
        child = subprocess.Popen(
            self.host.exec_argv([
                sys.executable, "-c",
                "import socket, sys, time\n"
                "from firezone.relay.ebpf import syscall\n"
                "syscall.link_create_xdp(int(sys.argv[1]), socket.if_nametoindex('eth0'),\n"
                "                        syscall.XDP_FLAGS_SKB_MODE)\n"
                "print('attached', flush=True)\n"
                "time.sleep(60)\n",
                str(self.program.fd)]),
            pass_fds=[self.program.fd], stdout=subprocess.PIPE, start_new_session=True)
        self.addCleanup(_kill, child)
        assert child.stdout is not None
        self.assertEqual(child.stdout.readline(), b"attached\n")
        self.assertEqual(xdp_state(self.host, "eth0"), "xdpgeneric relay_xdp")
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(10)
        netlab.wait_until(lambda: xdp_state(self.host, "eth0") == "", timeout=5,
                          what="the XDP program to go with its process")


def _kill(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.kill()
        child.wait()


class LoadErrorTests(SynchronousTestCase):
    """Compile and verifier failures become one line."""

    def setUp(self) -> None:
        shared_program()  # skips where BPF cannot load at all

    def load(self, source: str) -> str:
        path = Path(tempfile.mkdtemp()) / "bad.c"
        path.write_text(source)
        error = self.assertRaises(XdpOffloadError, XdpProgram.load, path)
        self.assertNotIn("\n", str(error))
        return str(error)

    def test_verifier_rejection(self) -> None:
        """An out-of-bounds packet read names the verifier's complaint and the source line."""
        message = self.load("#include <uapi/linux/bpf.h>\n"
                            "int relay_xdp(struct xdp_md *ctx) {\n"
                            "    unsigned char *data = (void *)(long)ctx->data;\n"
                            "    return data[100];\n}\n")
        self.assertIn("the verifier rejected the XDP program: invalid access to packet", message)
        self.assertIn("return data[100];", message)

    def test_compile_error(self) -> None:
        """A C error names file, line and clang's message."""
        message = self.load("#include <uapi/linux/bpf.h>\n"
                            "int relay_xdp(struct xdp_md *ctx) { return nope; }\n")
        self.assertIn("XDP program failed to compile: main.c:2:", message)
        self.assertIn("undeclared identifier 'nope'", message)


# ------------------------------------------------------------------------------------------
# The relay process with coturn's clients
# ------------------------------------------------------------------------------------------


class RelayLab:
    """client, relay and peer behind one router; the relay runs XDP on its only interface."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.lab = Lab(f"xdp{mode[:3]}")
        try:
            self._build()
        except BaseException:
            self.lab.teardown()
            raise

    def _build(self) -> None:
        hosts = netlab.star(self.lab, ["client", "relay", "peer"])
        self.client, self.relay_host, self.peer = hosts["client"], hosts["relay"], hosts["peer"]
        router = hosts["inet"]
        link = next(lk for lk in self.lab.links if lk.a is self.relay_host)
        # veth computes checksums lazily (CHECKSUM_PARTIAL): what reaches the relay must carry
        # complete ones, as frames from a real NIC do, or XDP's incremental update has nothing
        # to update.  The relay's own sockets too, so that tcpdump sees only real checksums.
        router.run(["ethtool", "-K", link.b_if, "tx", "off"])
        self.relay_host.run(["ethtool", "-K", "eth0", "tx", "off"])
        if self.mode == "driver":
            # Native XDP_TX on veth: the peer device must run XDP to receive the frames.
            router.run([sys.executable, "-c",
                        "import socket\n"
                        "from pyroute2 import IPRoute\n"
                        "from firezone.relay.ebpf import syscall\n"
                        f"i = socket.if_nametoindex('{link.b_if}')\n"
                        "IPRoute().link('set', index=i, xdp_fd=syscall.load_xdp_pass())\n"])
        # The real daemon, as an operator runs it: twistd firezone-relay with EBPF_* set.
        self.relay = self.relay_host.spawn(
            [twistd(), "-n", "--pidfile=", "firezone-relay", "--public-ip4", RELAY4,
             "--public-ip6", RELAY6, "--bind-ip4", RELAY4, "--bind-ip6", RELAY6,
             "--stamp-secret", STAMP_SECRET, "--allocations-per-username", "2",
             "--health-check", "127.0.0.1:18080"],
            env={"EBPF_OFFLOADING": "eth0", "EBPF_ATTACH_MODE": self.mode},
            name="firezone-relay-xdp", cwd=netlab.PROJECT_ROOT)
        netlab.wait_until(lambda: ("XDP offload attached" in self.relay.log()
                          and "relay listening" in self.relay.log()) or not self.relay.alive(),
                          timeout=180, what="the XDP relay to start")
        if not self.relay.alive():
            raise netlab.LabError(f"XDP relay exited:\n{self.relay.log()}")
        self.peer.spawn(["turnutils_peer", "-L", PEER4[0], "-L", PEER6[0], "-p", "3480"],
                        name="turnutils_peer")

    def counters(self) -> dict[tuple[str, str], float]:
        text = metrics(self.relay_host)
        return {(path, d): metric_value(text, "relay_packets_total", datapath=path, direction=d)
                for path in ("xdp", "userspace") for d in ("to_peer", "to_client")}

    def map_entries(self) -> float:
        return metric_value(metrics(self.relay_host), "relay_xdp_map_entries")

    def capture(self, host: Host) -> LabProcess:
        process = host.spawn(["tcpdump", "-vv", "-n", "-l", "-i", "eth0", "-Q", "in", "udp"],
                             name="tcpdump")
        netlab.wait_until(lambda: "listening on" in process.log(), timeout=10,
                          what="tcpdump to listen")
        return process

    def uclient(self, *args: str) -> str:
        username, password = credentials()
        result = self.client.run(["turnutils_uclient", "-u", username, "-w", password, *args],
                                 check=False, timeout=90)
        return result.stdout.decode() + result.stderr.decode()


_labs: dict[str, RelayLab | BaseException] = {}


def relay_lab(mode: str) -> RelayLab:
    """This module's relay lab for ``mode``, built on first use; the lab's atexit tears it down."""
    reason = netlab.unavailable_reason(tools=["turnutils_uclient", "turnutils_peer", "tcpdump",
                                              "ethtool"])
    if reason:
        raise SkipTest(reason)
    shared_program()  # skips with the reason where BPF cannot load
    if mode not in _labs:
        try:
            _labs[mode] = RelayLab(mode)
        except Exception as e:  # remembered: later tests fail fast with the same cause
            _labs[mode] = e
    lab = _labs[mode]
    if isinstance(lab, BaseException):
        raise AssertionError(f"the {mode} relay lab could not be built: {lab}")
    return lab


class RelayXdpMixin:
    """The relay process in one attach mode, with coturn's turnutils through it."""

    mode: str

    def setUp(self) -> None:
        self.lab = relay_lab(self.mode)

    def relayed_in_kernel(self, uclient_args: list[str], messages: int,
                          to_peer_capture: Host | None, sender_prefix: str) -> None:
        case: SynchronousTestCase = self  # type: ignore[assignment]
        lab = self.lab
        before = lab.counters()
        captures = [lab.capture(lab.client)]
        if to_peer_capture is not None:
            captures.append(lab.capture(to_peer_capture))
        out = lab.uclient("-n", str(messages), "-l", "1200", "-z", "5", "-c", *uclient_args)
        time.sleep(0.3)
        logs = []
        for capture in captures:
            capture.stop()
            logs.append(capture.log())
        sent, lost = lost_packets(out)
        case.assertEqual((sent >= messages, lost), (True, 0), out[-1500:])
        after = lab.counters()
        delta = {k: after[k] - before[k] for k in after}
        case.assertGreaterEqual(delta[("xdp", "to_peer")], sent, delta)
        case.assertGreaterEqual(delta[("xdp", "to_client")], sent, delta)
        # The first message may race its ChannelBind answer; the rest never see userspace.
        case.assertLessEqual(delta[("userspace", "to_peer")] + delta[("userspace", "to_client")],
                             4, delta)
        for log in logs:
            # tcpdump -vv marks wrong checksums "bad cksum" / "bad udp cksum" (a bare "bad"
            # also matches random IPv6 flow labels such as 0x5bad1).
            case.assertIsNone(re.search(r"bad (udp )?cksum", log), log[:3000])
            case.assertIn("sum ok", log)
        relayed = len(re.findall(rf"{re.escape(sender_prefix)}\.\d+ > ", logs[0]))
        case.assertGreaterEqual(relayed, sent, logs[0][:3000])

    def test_attached(self) -> None:
        """relay_xdp is attached to the relay's interface in the configured mode."""
        expected = {"generic": "xdpgeneric relay_xdp", "driver": "xdp relay_xdp"}[self.mode]
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertEqual(xdp_state(self.lab.relay_host, "eth0"), expected)

    def test_ipv4_relayed_in_kernel(self) -> None:
        """uclient -> relay -> turnutils_peer and back over IPv4: intact, in the kernel."""
        self.relayed_in_kernel(["-e", PEER4[0], "-r", "3480", RELAY4], 200, self.lab.peer,
                               RELAY4)

    def test_ipv6_relayed_in_kernel(self) -> None:
        """The same over IPv6 (-x asks for an IPv6 relay address)."""
        self.relayed_in_kernel(["-x", "-e", PEER6[0], "-r", "3480", RELAY6], 200, self.lab.peer,
                               RELAY6)

    def test_client_to_client_hairpin(self) -> None:
        """-y: two allocations on this relay talk through it without leaving the kernel."""
        self.relayed_in_kernel(["-y", RELAY4], 100, None, RELAY4)
        self.relayed_in_kernel(["-y", "-x", RELAY6], 100, None, RELAY6)

    def test_stun_still_answered(self) -> None:
        """STUN passes the program and is answered by userspace."""
        out = self.lab.client.run(["turnutils_stunclient", RELAY4]).stdout.decode()
        case: SynchronousTestCase = self  # type: ignore[assignment]
        case.assertIn(f"UDP reflexive addr: {CLIENT4[0]}:", out)

    def test_expired_binding_not_relayed_in_kernel(self) -> None:
        """After the allocation is gone the maps are empty and the old channel is not relayed."""
        case: SynchronousTestCase = self  # type: ignore[assignment]
        lab = self.lab
        log_start = len(lab.relay.log())
        out = lab.uclient("-n", "5", "-l", "100", "-c", "-e", PEER4[0], "-r", "3480", RELAY4)
        case.assertEqual(lost_packets(out)[1], 0, out[-1500:])
        bindings = re.findall(r"binding (create|delete) (\S+) (\d+) (\d+) (\S+) (\d+) (\d+)",
                              lab.relay.log()[log_start:])
        created = [b for b in bindings if b[0] == "create"]
        case.assertTrue(created, lab.relay.log()[log_start:])
        _, client_ip, client_port, channel, *_ = created[0]
        # turnutils_uclient deletes its allocation (Refresh 0) when it is done.
        netlab.wait_until(lambda: lab.map_entries() == 0, timeout=10,
                          what="the maps to empty")
        case.assertIn(("delete", *created[0][1:]), bindings)
        before = lab.counters()
        drops_before = metric_value(metrics(lab.relay_host), "relay_dropped_packets_total",
                                    reason="unbound_channel")
        # The old client socket (its port is free again) sends on the old channel.
        lab.client.run([sys.executable, "-c",
                        "import socket, struct\n"
                        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                        f"s.bind(('{client_ip}', {client_port}))\n"
                        f"s.sendto(struct.pack('!HH', {channel}, 4) + b'late', "
                        f"('{RELAY4}', 3478))\n"])
        netlab.wait_until(
            lambda: metric_value(metrics(lab.relay_host), "relay_dropped_packets_total",
                                 reason="unbound_channel") == drops_before + 1,
            timeout=5, what="userspace to drop the late ChannelData")
        case.assertEqual(lab.counters(), before)


class RelayXdpGenericTests(RelayXdpMixin, SynchronousTestCase):
    mode = "generic"


class RelayXdpDriverTests(RelayXdpMixin, SynchronousTestCase):
    mode = "driver"


class RelayRefusesTests(SynchronousTestCase):
    """Offload asked for and impossible: the relay does not start, and says why in one line."""

    def test_missing_interface(self) -> None:
        """A relay told to offload on an interface that does not exist exits 1."""
        reason = netlab.unavailable_reason()
        if reason:
            raise SkipTest(reason)
        with Lab("xdprefuse") as lab:
            host = lab.add_host("relay")
            process = host.python("tests/lab/xdp_relay.py", "--iface", "eth7",
                                  "--public-ip4", RELAY4, "--stamp-secret", STAMP_SECRET)
            self.assertEqual(process.wait(60), 1)
            lines = [line for line in process.log().splitlines() if "refused" in line]
            self.assertEqual(lines, ["relay refused to start: interface eth7 not found"])
