"""Compile and load ``bpf/relay_xdp.c`` with BCC; every failure becomes one clear line.

Compiling takes seconds, so a process loads the program once
(:meth:`XdpProgram.load`) and attaches it as often as it likes.  The maps are
used through :class:`~firezone.relay.ebpf.syscall.RawMap` (bytes in, bytes out);
BCC is only the compiler and loader.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from firezone.relay.ebpf import syscall
from firezone.relay.ebpf.headers import HeadersMissing, ensure_kernel_source
from firezone.relay.ebpf.maps import (
    BINDING_MAPS,
    COUNTER_SLOTS,
    BindingMaps,
    RelayConfig,
    counters_from,
)

__all__ = ["DEFAULT_SOURCE", "XdpOffloadError", "XdpProgram", "import_bcc"]

#: The program's source, kept beside the package in the source tree.
def _find_source() -> Path:
    """``bpf/relay_xdp.c`` in a source checkout, else where the wheel installs it."""
    checkout = Path(__file__).resolve().parents[3] / "bpf" / "relay_xdp.c"
    if checkout.exists():
        return checkout
    installed = Path(sys.prefix) / "share" / "firezone" / "bpf" / "relay_xdp.c"
    return installed if installed.exists() else checkout


DEFAULT_SOURCE = _find_source()
FUNCTION = "relay_xdp"
DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")


class XdpOffloadError(RuntimeError):
    """XDP offload was asked for and cannot work; the message is one line saying why."""


def import_bcc(fallback: Path = DEBIAN_BCC) -> ModuleType:
    """``bcc``, or Debian's copy loaded from its own path when the venv cannot see it.

    Only that package is loaded, not the rest of dist-packages (which would shadow
    the venv's libraries).
    """
    try:
        import bcc

        return bcc
    except ImportError:
        pass
    init = fallback / "__init__.py"
    if not init.exists():
        raise XdpOffloadError(
            "the bcc Python module is missing: apt-get install python3-bpfcc (Debian's "
            "module; PyPI's 'bcc' is an unrelated package)")
    spec = importlib.util.spec_from_file_location(
        "bcc", init, submodule_search_locations=[str(fallback)])
    if spec is None or spec.loader is None:
        raise XdpOffloadError(f"cannot import bcc from {fallback}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules["bcc"]
        raise XdpOffloadError(f"cannot import bcc from {fallback}: {e}") from e
    return module


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """libbcc prints compiler errors and verifier logs on fd 2; collect them."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def compile_error(lines: list[str]) -> str:
    """The first compiler error, e.g. ``main.c:3:12: error: use of undeclared ...``."""
    for line in lines:
        if "error:" in line:
            return re.sub(r"^/virtual/", "", line.strip())
    return lines[0].strip() if lines else "no compiler output"


_INSN = re.compile(r"^\d+: \(")


def verifier_error(lines: list[str]) -> str:
    """The verifier's complaint (the line after the last instruction it walked) and where."""
    last_insn = max((i for i, line in enumerate(lines) if _INSN.match(line)), default=-1)
    # BTF line info names the source line; its "@ main.c:N" counts lines of BCC's rewritten
    # text, not of the file, so only the code is kept.
    source = next((re.sub(r"\s*@ \S+:\d+$", "", line[2:]).strip()
                   for line in reversed(lines[: last_insn + 1]) if line.startswith("; ")), "")
    complaint = next((line.strip() for line in lines[last_insn + 1:]
                      if line.strip() and not line.startswith("processed ")), "")
    if not complaint:
        complaint = next((line.strip() for line in lines if line.strip()), "no verifier log")
    return f"{complaint} (at `{source}`)" if source else complaint


class XdpProgram:
    """The loaded program with its maps; not yet attached anywhere."""

    def __init__(self, bpf: Any, prog_fd: int, source: Path) -> None:
        self._bpf = bpf
        self.fd = prog_fd
        self.source = source
        tables = {name: bpf[name] for name in (*BINDING_MAPS, "CONFIG", "COUNTERS")}
        self.maps = {
            name: syscall.RawMap(t.map_fd, _size(t.Key), _size(t.Leaf))
            for name, t in tables.items() if name in BINDING_MAPS
        }
        self.config_map = syscall.RawMap(tables["CONFIG"].map_fd, 4, _size(tables["CONFIG"].Leaf))
        self.counter_map = syscall.RawMap(tables["COUNTERS"].map_fd, 4, 8, per_cpu=True)
        self.bindings = BindingMaps(self.maps)

    @classmethod
    def load(cls, source: Path = DEFAULT_SOURCE) -> XdpProgram:
        """Compile and verify; raises :class:`XdpOffloadError` with the reason."""
        if os.geteuid() != 0:
            raise XdpOffloadError("loading XDP programs needs root (CAP_BPF and CAP_NET_ADMIN)")
        if not source.is_file():
            raise XdpOffloadError(f"XDP program source {source} not found")
        bcc = import_bcc()
        try:
            ensure_kernel_source()
        except HeadersMissing as e:
            raise XdpOffloadError(str(e)) from e
        with _captured_stderr() as out:
            try:
                bpf = bcc.BPF(src_file=str(source).encode())
            except Exception:
                bpf = None
        if bpf is None:
            raise XdpOffloadError(f"XDP program failed to compile: {compile_error(out)}")
        with _captured_stderr() as out:
            try:
                fn = bpf.load_func(FUNCTION.encode(), bcc.BPF.XDP)
            except Exception as e:
                fn, failure = None, str(e)
        if fn is None:
            bpf.cleanup()
            if any(_INSN.match(line) for line in out):
                raise XdpOffloadError(f"the verifier rejected the XDP program: "
                                      f"{verifier_error(out)}")
            raise XdpOffloadError(f"cannot load the XDP program: {failure}")
        return cls(bpf, fn.fd, source)

    def configure(self, config: RelayConfig) -> None:
        self.config_map.put(bytes(4), config.encode())

    def counters(self) -> dict[str, tuple[int, int]]:
        """Packets and payload bytes relayed in the kernel, per direction, summed over CPUs."""
        slots = max(s for pair in COUNTER_SLOTS.values() for s in pair) + 1
        per_cpu = []
        for slot in range(slots):
            raw = self.counter_map.get(slot.to_bytes(4, sys.byteorder)) or b""
            per_cpu.append([int.from_bytes(raw[i : i + 8], sys.byteorder)
                            for i in range(0, len(raw), 8)])
        return counters_from(per_cpu)

    def test_run(self, frame: bytes) -> tuple[int, bytes]:
        """Run the program on one frame (nothing is sent): ``(XDP action, frame after)``."""
        action, out, _ = syscall.prog_test_run(self.fd, frame)
        return action, out

    def clear(self) -> None:
        """Empty the binding maps (counters keep counting)."""
        self.bindings.reconcile(())

    def close(self) -> None:
        self._bpf.cleanup()


def _size(ctype: Any) -> int:
    import ctypes

    return ctypes.sizeof(ctype)
