"""The relay benchmark's own plumbing: TURN setup script, sink counter and trafgen config.

The lab test runs ``bench/turn_setup.py`` against ``firezone-relay`` in the
benchmark's two-host topology and sends ChannelData with a plain socket (no
trafgen), so a broken setup shows up here rather than as a silent zero in
the benchmark.
"""

from __future__ import annotations

import hashlib
import json

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench import _lab
from bench.turn_setup import payload_for
from tests.lab import netlab
from tests.lab.netlab import Lab, LabError
from tests.lab.relay_process import credentials, start_firezone_relay

#: Reads up to N datagrams (5 s without one ends it) and prints what each was.
SINK = """
import hashlib, json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(5)
print("ready", flush=True)
got = []
try:
    while len(got) < int(sys.argv[3]):
        data, sender = s.recvfrom(65535)
        got.append([len(data), hashlib.sha256(data).hexdigest(), f"{sender[0]}:{sender[1]}"])
except TimeoutError:
    pass
print(json.dumps(got), flush=True)
"""

TRAFGEN_OUTPUT = """     1 packets to schedule
  1246 bytes in total
Running! Hang up with ^C!


      500000 packets outgoing
   623000000 bytes outgoing
           2 sec, 353544 usec on CPU0 (500000 packets)
"""


class TrafgenConfigTests(SynchronousTestCase):
    """The frame trafgen sends and how its statistics are read."""

    def test_frame_is_channeldata_from_the_client(self) -> None:
        """The frame carries ChannelData on channel 0x4000 with length 1200 from the client port."""
        config = _lab.trafgen_config("02:00:00:00:00:01", "02:00:00:00:00:02")
        self.assertIn("eth(da=02:00:00:00:00:02, sa=02:00:00:00:00:01)", config)
        self.assertIn(f"ipv4(sa={_lab.CLIENT_IP}, da={_lab.RELAY_IP}", config)
        self.assertIn(f"udp(sp={_lab.CLIENT_PORT}, dp=3478)", config)
        self.assertIn("c16(16384), c16(1200)", config)
        self.assertIn("fill(0xa5, 1200)", config)

    def test_parse_statistics(self) -> None:
        """Packets sent and the sender's active time come from trafgen's closing lines."""
        run = _lab.parse_trafgen(TRAFGEN_OUTPUT, wall_seconds=3.0)
        self.assertEqual(run.sent, 500000)
        self.assertAlmostEqual(run.seconds, 2.353544)
        self.assertAlmostEqual(run.pps, 500000 / 2.353544)

    def test_parse_without_statistics_fails(self) -> None:
        """Output without a packet count is an error, not zero packets."""
        self.assertRaises(LabError, _lab.parse_trafgen, "trafgen: invalid option", 1.0)


class TurnSetupTests(SynchronousTestCase):
    """bench/turn_setup.py gets a channel from firezone-relay that relays to the peer."""

    def setUp(self) -> None:
        reason = netlab.unavailable_reason(need_nft=True)
        if reason:
            raise SkipTest(reason)
        self.lab = Lab("bench-relay-test")
        self.addCleanup(self.lab.teardown)
        self.topology = _lab.build_topology(self.lab)
        start_firezone_relay(self.topology.relay, _lab.RELAY_IP, lowest=49152, highest=49160)

    def test_channel_data_reaches_the_peer(self) -> None:
        """Five ChannelData messages arrive at the peer from the relayed address, intact."""
        gen = self.topology.gen
        _lab.add_sink_counter(gen, _lab.PEER_IP, _lab.SINK_PORT)
        sink = _lab.python_in(gen, SINK, _lab.PEER_IP, str(_lab.SINK_PORT), "5", name="sink")
        netlab.wait_until(lambda: "ready" in sink.log(), timeout=5, what="sink")
        username, password = credentials()
        _setup, result = _lab.start_turn_setup(gen, username, password, sink=False, send=5,
                                               lifetime=0)
        self.assertEqual(result["realm"], "firezone")
        self.assertEqual(result["client"], f"{_lab.CLIENT_IP}:{_lab.CLIENT_PORT}")
        sink.wait(timeout=10)
        received = json.loads(sink.log().splitlines()[-1])
        expected = [[_lab.PAYLOAD, hashlib.sha256(payload_for(i, _lab.PAYLOAD)).hexdigest(),
                     result["relayed"]] for i in range(5)]
        self.assertEqual(received, expected, self.lab.logs())
        self.assertEqual(_lab.read_sink_counter(gen), 5)

    def test_wrong_password_is_refused(self) -> None:
        """A password the relay did not mint gets no allocation, and the script says so."""
        username, _ = credentials()
        with self.assertRaises(LabError) as caught:
            _lab.start_turn_setup(self.topology.gen, username, "not-the-password")
        self.assertIn("401", str(caught.exception))
