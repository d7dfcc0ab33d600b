"""The few bpf(2) commands BCC's Python module lacks, through ctypes.

- ``BPF_LINK_CREATE`` attaches XDP as a *link*: the program stays attached only
  while the relay holds the link's file descriptor, so a relay that crashes or is
  killed takes its kernel data path with it.  (A netlink attach, which BCC's
  ``attach_xdp`` and pyroute2 use, outlives the process and would keep relaying
  for bindings nobody expires any more.)
- ``BPF_PROG_TEST_RUN`` runs the program on one frame without an interface: how
  the tests check every rewrite byte for byte.
- ``BPF_PROG_LOAD`` of a two-instruction ``XDP_PASS`` program, which a veth peer
  needs so that frames sent with ``XDP_TX`` in native mode are received at all.
- Map element and batch operations on plain bytes (:class:`RawMap`): BCC's table
  classes allocate a ctypes array of ``max_entries`` per batch scan.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "XDP_ABORTED",
    "XDP_DROP",
    "XDP_FLAGS_DRV_MODE",
    "XDP_FLAGS_SKB_MODE",
    "XDP_PASS",
    "XDP_REDIRECT",
    "XDP_TX",
    "BpfError",
    "RawMap",
    "RunStats",
    "link_create_xdp",
    "load_xdp_pass",
    "prog_run_stats",
    "prog_test_run",
]

# enum bpf_cmd, bpf_prog_type, bpf_attach_type (include/uapi/linux/bpf.h)
_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_UPDATE_ELEM = 2
_BPF_MAP_DELETE_ELEM = 3
_BPF_PROG_LOAD = 5
_BPF_PROG_TEST_RUN = 10
_BPF_MAP_LOOKUP_BATCH = 24
_BPF_LINK_CREATE = 28
_BPF_PROG_TYPE_XDP = 6
_BPF_XDP = 37

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
_ATTR_SIZE = 128  # larger than every command used here; the tail stays zero

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class BpfError(OSError):
    """A bpf(2) command failed; ``errno`` says why."""


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    result = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), _ATTR_SIZE)
    if result < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return int(result)


def _attr(*fields: tuple[int, str, int | bytes]) -> ctypes.Array[ctypes.c_char]:
    """A zeroed ``union bpf_attr`` with ``(offset, struct format, value)`` fields set."""
    import struct

    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    for offset, fmt, value in fields:
        struct.pack_into("=" + fmt, buf, offset, value)
    return buf


def possible_cpus() -> int:
    """How many per-CPU slots a per-CPU map value has (``/sys/devices/system/cpu/possible``)."""
    with open("/sys/devices/system/cpu/possible") as f:
        ranges = f.read().strip()
    count = 0
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


class RawMap:
    """A BPF map by fd, keys and values as bytes."""

    def __init__(self, fd: int, key_size: int, value_size: int, per_cpu: bool = False) -> None:
        self.fd = fd
        self.key_size = key_size
        self.value_size = value_size
        # A per-CPU lookup returns one value per possible CPU, each padded to 8 bytes.
        self._read_size = ((value_size + 7) // 8 * 8) * possible_cpus() if per_cpu else value_size
        self._chunk = 256
        # One key, one value and one attr buffer, reused: single-threaded use, and no
        # allocations per binding command.
        self._k = ctypes.create_string_buffer(key_size)
        self._v = ctypes.create_string_buffer(max(self._read_size, value_size))
        self._elem = _attr((0, "I", fd), (8, "Q", ctypes.addressof(self._k)),
                           (16, "Q", ctypes.addressof(self._v)))
        # Delete takes nothing after the key (the kernel checks that the rest is zero).
        self._delete = _attr((0, "I", fd), (8, "Q", ctypes.addressof(self._k)))

    def _key(self, key: bytes) -> None:
        if len(key) != self.key_size:
            raise ValueError(f"key of {len(key)} bytes for a map with {self.key_size}-byte keys")
        ctypes.memmove(self._k, key, len(key))

    def put(self, key: bytes, value: bytes) -> None:
        if len(value) != self.value_size:
            raise ValueError(f"value of {len(value)} bytes, map takes {self.value_size}")
        self._key(key)
        ctypes.memmove(self._v, value, len(value))
        _bpf(_BPF_MAP_UPDATE_ELEM, self._elem)

    def get(self, key: bytes) -> bytes | None:
        self._key(key)
        try:
            _bpf(_BPF_MAP_LOOKUP_ELEM, self._elem)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return self._v.raw[: self._read_size]

    def delete(self, key: bytes) -> None:
        self._key(key)
        try:
            _bpf(_BPF_MAP_DELETE_ELEM, self._delete)
        except BpfError as e:
            if e.errno != errno.ENOENT:
                raise

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every entry, a few hundred per syscall (``BPF_MAP_LOOKUP_BATCH``)."""
        token_in = ctypes.create_string_buffer(max(self.key_size, 8))
        token_out = ctypes.create_string_buffer(max(self.key_size, 8))
        first = True
        while True:
            chunk = self._chunk
            keys = ctypes.create_string_buffer(self.key_size * chunk)
            values = ctypes.create_string_buffer(self._read_size * chunk)
            attr = _attr(
                (0, "Q", 0 if first else ctypes.addressof(token_in)),
                (8, "Q", ctypes.addressof(token_out)),
                (16, "Q", ctypes.addressof(keys)),
                (24, "Q", ctypes.addressof(values)),
                (32, "I", chunk),
                (36, "I", self.fd),
            )
            done = False
            try:
                _bpf(_BPF_MAP_LOOKUP_BATCH, attr)
            except BpfError as e:
                if e.errno == errno.ENOSPC:  # one hash bucket holds more than a chunk
                    self._chunk *= 2
                    continue
                if e.errno != errno.ENOENT:
                    raise
                done = True
            count = int.from_bytes(attr.raw[32:36], "little")
            k, v = keys.raw, values.raw
            for i in range(count):
                yield (k[i * self.key_size : (i + 1) * self.key_size],
                       v[i * self._read_size : (i + 1) * self._read_size])
            if done:
                return
            ctypes.memmove(token_in, token_out, len(token_out))
            first = False


def link_create_xdp(prog_fd: int, ifindex: int, flags: int) -> int:
    """Attach ``prog_fd`` to ``ifindex``; the returned link fd detaches it when closed."""
    attr = _attr((0, "I", prog_fd), (4, "I", ifindex), (8, "I", _BPF_XDP), (12, "I", flags))
    return _bpf(_BPF_LINK_CREATE, attr)


def prog_test_run(prog_fd: int, frame: bytes, repeat: int = 1) -> tuple[int, bytes, int]:
    """Run an XDP program on ``frame``: ``(action, frame after the program, ns per run)``."""
    data_in = ctypes.create_string_buffer(frame, len(frame))
    out_size = len(frame) + 512  # the program may grow the frame into its headroom
    data_out = ctypes.create_string_buffer(out_size)
    attr = _attr(
        (0, "I", prog_fd),
        (8, "I", len(frame)),
        (12, "I", out_size),
        (16, "Q", ctypes.addressof(data_in)),
        (24, "Q", ctypes.addressof(data_out)),
        (32, "I", repeat),
    )
    _bpf(_BPF_PROG_TEST_RUN, attr)
    retval, size_out = (int.from_bytes(attr.raw[o : o + 4], "little") for o in (4, 12))
    duration = int.from_bytes(attr.raw[36:40], "little")
    return retval, data_out.raw[:size_out], duration


def load_xdp_pass(name: str = "xdp_pass") -> int:
    """Load ``r0 = XDP_PASS; exit`` and return its fd (attach it with ``link_create_xdp``
    or netlink)."""
    # BPF_ALU64|BPF_MOV|BPF_K to r0, imm XDP_PASS; then BPF_JMP|BPF_EXIT.
    insns = bytes([0xB7, 0x00, 0, 0]) + XDP_PASS.to_bytes(4, "little") + bytes([0x95]) + bytes(7)
    code = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    attr = _attr(
        (0, "I", _BPF_PROG_TYPE_XDP),
        (4, "I", 2),
        (8, "Q", ctypes.addressof(code)),
        (16, "Q", ctypes.addressof(license)),
        (48, "16s", name[:15].encode()),  # prog_name
    )
    return _bpf(_BPF_PROG_LOAD, attr)


@dataclass(frozen=True, slots=True)
class RunStats:
    """What ``kernel.bpf_stats_enabled=1`` makes the kernel count for one program."""

    run_cnt: int
    run_time_ns: int


def prog_run_stats(prog_fd: int, pid: int | str = "self") -> RunStats:
    """Read ``run_cnt``/``run_time_ns`` from ``/proc/PID/fdinfo/FD`` (no bpftool needed)."""
    with open(f"/proc/{pid}/fdinfo/{prog_fd}") as f:
        text = f.read()
    fields = dict(re.findall(r"^(run_cnt|run_time_ns):\s*(\d+)", text, re.MULTILINE))
    return RunStats(int(fields.get("run_cnt", 0)), int(fields.get("run_time_ns", 0)))
