"""ICE candidates as signalled over the portal: SDP ``candidate:`` strings (RFC 8839 5.1).

The reference signals each candidate as e.g.
``candidate:1 1 udp 2130706431 1.1.1.1 80 typ host`` (``connlib/model`` via
str0m), with ``raddr``/``rport`` for server-reflexive and relayed ones.  A
:class:`Candidate` is a value: :meth:`Candidate.decode` parses such a string
(raising :class:`CandidateError` so callers can skip what they cannot use, as
the reference does) and :meth:`Candidate.encode` writes it back.

Priorities follow RFC 8445 5.1.2.1; foundations are opaque tokens that are
equal for candidates of the same type and base (RFC 8445 5.1.1.3).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DEFAULT_LOCAL_PREFERENCE",
    "TYPE_PREFERENCE",
    "Address",
    "Candidate",
    "CandidateError",
    "CandidateKind",
    "compute_foundation",
    "compute_priority",
]

Address = tuple[str, int]


class CandidateError(ValueError):
    """The text is not a candidate this codec can represent (skip it)."""


class CandidateKind(StrEnum):
    HOST = "host"
    SRFLX = "srflx"
    PRFLX = "prflx"
    RELAY = "relay"


#: RFC 8445 5.1.2.2 recommended type preferences.
TYPE_PREFERENCE: dict[CandidateKind, int] = {
    CandidateKind.HOST: 126,
    CandidateKind.PRFLX: 110,
    CandidateKind.SRFLX: 100,
    CandidateKind.RELAY: 0,
}

#: A single-homed agent's local preference (RFC 8445 5.1.2.1: "SHOULD be 65535").
DEFAULT_LOCAL_PREFERENCE = 65535

_FOUNDATION_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
)
_TOKEN_FORBIDDEN = frozenset(" \t\r\n\x00")


def compute_priority(
    kind: CandidateKind, local_preference: int = DEFAULT_LOCAL_PREFERENCE, component: int = 1
) -> int:
    """``2^24 * type pref + 2^8 * local pref + (256 - component)`` (RFC 8445 5.1.2.1)."""
    if not 0 <= local_preference <= 0xFFFF:
        raise CandidateError(f"local preference out of range: {local_preference}")
    if not 1 <= component <= 256:
        raise CandidateError(f"component out of range: {component}")
    return (TYPE_PREFERENCE[CandidateKind(kind)] << 24) | (local_preference << 8) | (
        256 - component
    )


def compute_foundation(kind: CandidateKind, base_ip: str, transport: str = "udp") -> str:
    """Equal for equal (type, base IP, transport), as RFC 8445 5.1.1.3 asks; opaque otherwise."""
    digest = hashlib.sha256(f"{kind}|{base_ip}|{transport}".encode()).digest()
    return str(int.from_bytes(digest[:4], "big"))


def _canonical_ip(text: str) -> str:
    if "%" in text:
        raise CandidateError(f"scoped addresses are not usable: {text!r}")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise CandidateError(f"not an IP address: {text!r}") from None


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise CandidateError(f"port out of range: {port}")


def _decimal(text: str, what: str, limit: int) -> int:
    """A plain ASCII decimal up to ``limit``; ``int()`` alone would take '+1', '1_0', etc."""
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise CandidateError(f"{what} is not a decimal number: {text!r}")
    value = int(text)
    if value > limit:
        raise CandidateError(f"{what} out of range: {value}")
    return value


@dataclass(frozen=True, slots=True)
class Candidate:
    """One ICE candidate; ``address`` and ``related`` hold canonical IP text.

    ``related`` is the ``raddr``/``rport`` pair: the base of a server-reflexive
    candidate, the mapped address of a relayed one (RFC 8445 5.1.1.2).
    """

    kind: CandidateKind
    address: Address
    priority: int
    foundation: str
    component: int = 1
    transport: str = "udp"
    related: Address | None = None

    def __post_init__(self) -> None:
        try:
            kind = CandidateKind(self.kind)
        except ValueError:
            raise CandidateError(f"unknown candidate type {self.kind!r}") from None
        object.__setattr__(self, "kind", kind)
        ip, port = self.address
        _check_port(port)
        object.__setattr__(self, "address", (_canonical_ip(ip), port))
        if self.related is not None:
            rip, rport = self.related
            _check_port(rport)
            object.__setattr__(self, "related", (_canonical_ip(rip), rport))
        if not 0 <= self.priority <= 0xFFFFFFFF:
            raise CandidateError(f"priority out of range: {self.priority}")
        if not 1 <= self.component <= 256:
            raise CandidateError(f"component out of range: {self.component}")
        if not (1 <= len(self.foundation) <= 32 and set(self.foundation) <= _FOUNDATION_CHARS):
            raise CandidateError(f"bad foundation {self.foundation!r}")
        transport = self.transport.lower()
        if not transport or not transport.isascii() or set(transport) & _TOKEN_FORBIDDEN:
            raise CandidateError(f"bad transport {self.transport!r}")
        object.__setattr__(self, "transport", transport)

    # -- constructors ------------------------------------------------------------------

    @classmethod
    def host(cls, address: Address, *, local_preference: int = DEFAULT_LOCAL_PREFERENCE
             ) -> Candidate:
        return cls._make(CandidateKind.HOST, address, address[0], None, local_preference)

    @classmethod
    def srflx(cls, address: Address, base: Address | None = None, *,
              local_preference: int = DEFAULT_LOCAL_PREFERENCE) -> Candidate:
        base_ip = base[0] if base is not None else address[0]
        return cls._make(CandidateKind.SRFLX, address, base_ip, base, local_preference)

    @classmethod
    def relay(cls, address: Address, mapped: Address | None = None, *,
              local_preference: int = DEFAULT_LOCAL_PREFERENCE) -> Candidate:
        return cls._make(CandidateKind.RELAY, address, address[0], mapped, local_preference)

    @classmethod
    def prflx(cls, address: Address, priority: int) -> Candidate:
        """A peer-reflexive remote candidate learnt from a check (RFC 8445 7.3.1.3)."""
        foundation = compute_foundation(CandidateKind.PRFLX, address[0])
        return cls(CandidateKind.PRFLX, address, priority, foundation)

    @classmethod
    def _make(cls, kind: CandidateKind, address: Address, base_ip: str,
              related: Address | None, local_preference: int) -> Candidate:
        base_ip = _canonical_ip(base_ip)
        return cls(kind, address, compute_priority(kind, local_preference),
                   compute_foundation(kind, base_ip), related=related)

    # -- derived -----------------------------------------------------------------------

    @property
    def ip(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.address[0]

    @property
    def local_preference(self) -> int:
        return (self.priority >> 8) & 0xFFFF

    # -- codec -------------------------------------------------------------------------

    def encode(self) -> str:
        """The SDP attribute value, ``candidate:...`` (no ``a=`` prefix, as the reference)."""
        text = (
            f"candidate:{self.foundation} {self.component} {self.transport} {self.priority}"
            f" {self.address[0]} {self.address[1]} typ {self.kind}"
        )
        if self.related is not None:
            text += f" raddr {self.related[0]} rport {self.related[1]}"
        return text

    @classmethod
    def decode(cls, text: str) -> Candidate:
        """Parse ``[a=]candidate:<foundation> <component> <transport> <priority> <ip> <port>
        typ <type> [raddr <ip> rport <port>] *(<name> <value>)``; unknown extensions
        (``generation``, ``ufrag``, ``network-id`` ...) are ignored."""
        if not isinstance(text, str):
            raise CandidateError("candidate must be text")
        line = text.strip()
        if line.startswith("a="):
            line = line[2:]
        if not line.startswith("candidate:"):
            raise CandidateError("missing 'candidate:' prefix")
        tokens = line[len("candidate:"):].split(" ")
        if len(tokens) < 8 or "" in tokens:
            raise CandidateError("truncated or badly spaced candidate")
        foundation, component, transport, priority, ip, port, typ, kind = tokens[:8]
        if typ != "typ":
            raise CandidateError("expected 'typ'")
        extensions = tokens[8:]
        if len(extensions) % 2:
            raise CandidateError("extension without a value")
        raddr: str | None = None
        rport: int | None = None
        for name, value in zip(extensions[::2], extensions[1::2], strict=True):
            if name == "raddr":
                if raddr is not None:
                    raise CandidateError("duplicate raddr")
                raddr = value
            elif name == "rport":
                if rport is not None:
                    raise CandidateError("duplicate rport")
                rport = _decimal(value, "rport", 0xFFFF)
        if (raddr is None) != (rport is None):
            raise CandidateError("raddr and rport go together")
        try:
            kind_value = CandidateKind(kind)
        except ValueError:
            raise CandidateError(f"unknown candidate type {kind!r}") from None
        related = (raddr, rport) if raddr is not None and rport is not None else None
        return cls(
            kind=kind_value,
            address=(ip, _decimal(port, "port", 0xFFFF)),
            priority=_decimal(priority, "priority", 0xFFFFFFFF),
            foundation=foundation,
            component=_decimal(component, "component", 256),
            transport=transport,
            related=related,
        )
