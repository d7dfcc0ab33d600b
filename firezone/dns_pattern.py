"""DNS resource address patterns: parsing, validation, matching, specificity.

The portal validates a DNS resource address with :func:`validate_pattern`; the
client matches query names against the patterns it was given with
:class:`DnsPattern` and picks the winner with :func:`best_match`.

Syntax (REFERENCE.md 5.3, reference ``dns/pattern.rs``), a glob over labels:

* names and patterns compare case-insensitively; one trailing dot is ignored;
* ``?`` matches exactly one character inside a label;
* ``*`` matches any run of characters (possibly empty) inside one label, so a
  label that is just ``*`` matches exactly one whole label;
* a leading ``*`` label also matches *no* label when the rest of the pattern is
  a plain name: ``*.example.com`` matches ``example.com`` too.  (Like the
  reference, which compares the remainder literally; ``*.*.example.com`` does
  not match ``a.example.com``.)
* ``**`` must be a whole label and matches any number of labels, zero
  included: ``**.example.com`` matches ``example.com`` and ``a.b.example.com``.

Specificity (:attr:`DnsPattern.sort_key`, smaller = more specific): labels are
compared right to left; at the first differing label a plain label beats one
with only ``?`` wildcards, which beats one with ``*``, which beats ``**``;
within one class more literal characters win; a pattern that ends (has no more
labels) beats one that goes on.  This reproduces the ordering table of the
reference ``pattern_ordering`` test.  Where the reference compares single
characters instead of labels we compare labels (``a?.com`` is more specific
than ``*a.com`` here), as the label is the unit of a glob over names.

Label characters: letters (Unicode letters too, as the reference accepts),
digits, ``-`` (not first or last), ``_`` (accepted for SRV-style names; the
reference rejects it) and the wildcards.  Non-ASCII labels are matched as
given; nothing is converted to or from punycode.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = [
    "DnsPattern",
    "InvalidPattern",
    "best_match",
    "normalize_name",
    "validate_pattern",
]

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63

_RANK_LITERAL = 0
_RANK_QUESTION = 1
_RANK_STAR = 2
_RANK_DOUBLE_STAR = 3

# IANA TLDs under which a domain made only of wildcards would cover a whole
# public namespace (e.g. ``*.com``); the portal refuses those.
_COMMON_TLDS = frozenset(
    """
    com org net edu gov mil biz info name mobi pro
    ac ad ae af ag ai al am ao ar as at au aw ax az ba bb bd be bf bg bh bi bj
    bm bn bo br bs bt bv bw by bz ca cc cd cf cg ch ci ck cl cm cn co cr cu cv
    cw cx cy cz de dj dk dm do dz ec ee eg er es et eu fi fj fk fm fo fr ga gb
    gd ge gf gg gh gi gl gm gn gp gq gr gt gu gw gy hk hm hn hr ht hu id ie il
    im in io iq ir is it je jm jo jp ke kg kh ki km kn kp kr kw ky kz la lb lc
    li lk lr ls lt lu lv ly ma mc md me mg mh mk ml mm mn mo mp mq mr ms mt mu
    mv mw mx my mz na nc ne nf ng ni nl no np nr nu nz om pa pe pf pg ph pk pl
    pm pn pr ps pt pw py qa re ro rs ru rw sa sb sc sd se sg sh si sj sk sl sm
    sn so sr ss st sv sx sy sz tc td tf tg th tj tk tl tm tn to tr tt tv tw tz
    ua ug uk us uy uz va vc ve vg vi vn vu wf ws ye yt za zm zw
    """.split()
)
_PROHIBITED_TLDS = frozenset({"localhost"})


class InvalidPattern(ValueError):
    """A DNS pattern (or resource address) that cannot be used."""


def _is_label_char(c: str) -> bool:
    if c.isascii():
        return c.isalnum() or c in "-_*?"
    return c.isalpha()


def _normalize(text: str) -> str:
    s = text.strip().lower()
    if s.endswith("."):
        s = s[:-1]
    return s


def normalize_name(name: str) -> str | None:
    """Lower-case ``name`` and drop one trailing dot; None if it has an empty label."""
    s = _normalize(name)
    if not s or any(label == "" for label in s.split(".")):
        return None
    return s


def _label_rank(label: str) -> int:
    if label == "**":
        return _RANK_DOUBLE_STAR
    if "*" in label:
        return _RANK_STAR
    if "?" in label:
        return _RANK_QUESTION
    return _RANK_LITERAL


def _label_regex(label: str) -> str:
    out = []
    for c in label:
        if c == "*":
            out.append("[^.]*")
        elif c == "?":
            out.append("[^.]")
        else:
            out.append(re.escape(c))
    return "".join(out)


def _parse_labels(pattern: str) -> tuple[str, ...]:
    """Structural checks shared by the client and the portal."""
    if not pattern:
        raise InvalidPattern("pattern must not be empty")
    if len(pattern) > MAX_NAME_LENGTH:
        raise InvalidPattern(
            f"pattern is {len(pattern)} characters long, at most {MAX_NAME_LENGTH} are allowed"
        )
    labels = tuple(pattern.split("."))
    for label in labels:
        if label == "":
            raise InvalidPattern(f"pattern {pattern!r} has an empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidPattern(f"label {label!r} is longer than {MAX_LABEL_LENGTH} characters")
        bad = sorted({c for c in label if not _is_label_char(c)})
        if bad:
            if ":" in bad:
                raise InvalidPattern(f"pattern {pattern!r} must not contain a port or ':'")
            raise InvalidPattern(
                f"label {label!r} contains invalid characters {''.join(bad)!r}; allowed are "
                "letters, digits, '-', '_' and the wildcards '*', '?', '**'"
            )
        if label[0] == "-" or label[-1] == "-":
            raise InvalidPattern(f"label {label!r} must not start or end with '-'")
        if "**" in label and label != "**":
            raise InvalidPattern(f"label {label!r}: '**' must stand alone as a whole label")
    if all(set(label) <= {"*", "?"} for label in labels):
        raise InvalidPattern(
            f"pattern {pattern!r} consists only of wildcards; it must include a domain"
        )
    return labels


class DnsPattern:
    """A parsed DNS pattern; immutable, hashable, compares by its normalised text."""

    __slots__ = ("_key", "_labels", "_literal_rest", "_regex", "pattern")

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str):
            raise InvalidPattern("pattern must be a string")
        self.pattern = _normalize(pattern)
        self._labels = _parse_labels(self.pattern)
        self._regex = re.compile(self._build_regex(self._labels), re.DOTALL)
        rest = self._labels[1:]
        self._literal_rest: str | None = None
        if self._labels[0] == "*" and rest and all("*" not in lb and "?" not in lb for lb in rest):
            self._literal_rest = ".".join(rest)
        self._key = tuple(
            (_label_rank(lb), -sum(c not in "*?" for c in lb), lb) for lb in reversed(self._labels)
        )

    @staticmethod
    def _build_regex(labels: tuple[str, ...]) -> str:
        # ``**.**`` means the same as ``**``; collapsing keeps the dots simple.
        collapsed: list[str] = []
        for label in labels:
            if not (label == "**" and collapsed and collapsed[-1] == "**"):
                collapsed.append(label)
        n = len(collapsed)
        parts: list[str] = []
        for i, label in enumerate(collapsed):
            if label == "**":
                if i == n - 1:
                    # Trailing: ``a.**`` matches ``a`` too, so each repetition
                    # carries its own leading dot (the label before adds none).
                    parts.append(r"(?:\.[^.]+)*")
                else:
                    # Leading or inner: each repetition carries its trailing dot.
                    parts.append(r"(?:[^.]+\.)*")
                continue
            parts.append(_label_regex(label))
            next_is_trailing_double_star = i + 1 == n - 1 and collapsed[i + 1] == "**"
            if i != n - 1 and not next_is_trailing_double_star:
                parts.append(r"\.")
        return r"\A" + "".join(parts) + r"\Z"

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def sort_key(self) -> tuple[tuple[int, int, str], ...]:
        """Smaller is more specific; see the module docstring."""
        return self._key

    @property
    def has_wildcards(self) -> bool:
        return any(_label_rank(lb) != _RANK_LITERAL for lb in self._labels)

    def matches(self, name: str) -> bool:
        """Whether the query ``name`` (any case, optional trailing dot) matches."""
        normalized = normalize_name(name)
        if normalized is None:
            return False
        if self._literal_rest is not None and normalized == self._literal_rest:
            return True
        return self._regex.match(normalized) is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DnsPattern):
            return NotImplemented
        return self.pattern == other.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def __lt__(self, other: DnsPattern) -> bool:
        return self._key < other._key

    def __repr__(self) -> str:
        return f"DnsPattern({self.pattern!r})"

    def __str__(self) -> str:
        return self.pattern


@functools.lru_cache(maxsize=4096)
def _cached(pattern: str) -> DnsPattern:
    return DnsPattern(pattern)


def validate_pattern(s: str) -> str:
    """Validate a DNS resource address and return it normalised.

    On top of the structural rules of :class:`DnsPattern` this applies the
    portal's address rules: the top-level label may hold no wildcard and may
    not be ``localhost``; an IP address is refused (that is an ``ip``/``cidr``
    resource); under a common IANA TLD the rest may not be only wildcards
    (``*.com``).
    """
    if not isinstance(s, str):
        raise InvalidPattern("pattern must be a string")
    normalized = _normalize(s)
    if normalized:
        try:
            ipaddress.ip_network(normalized, strict=False)
        except ValueError:
            pass
        else:
            raise InvalidPattern(
                f"{normalized!r} is an IP address, not a domain; use an ip or cidr resource"
            )
    labels = DnsPattern(normalized).labels
    tld, rest = labels[-1], labels[:-1]
    if "*" in tld or "?" in tld:
        raise InvalidPattern(f"the top-level label {tld!r} must not contain wildcards")
    if tld in _PROHIBITED_TLDS:
        raise InvalidPattern(
            f"{tld!r} cannot be used as a top-level domain; add a DNS alias on the gateway instead"
        )
    if tld in _COMMON_TLDS and rest and all(set(lb) <= {"*", "?"} for lb in rest):
        raise InvalidPattern(
            f"a domain under the public TLD {tld!r} must not consist solely of wildcards"
        )
    return normalized


T = TypeVar("T")


def best_match(
    name: str,
    patterns: Iterable[T],
    key: Callable[[T], DnsPattern | str] | None = None,
) -> T | None:
    """The most specific of ``patterns`` matching ``name``, or None.

    ``key`` maps an item to its pattern (a :class:`DnsPattern` or a pattern
    string); without it the items themselves are patterns.  Items whose
    pattern string does not parse are skipped.  Among equally specific
    matches the first one wins.
    """
    best: T | None = None
    best_key: tuple[tuple[int, int, str], ...] | None = None
    for item in patterns:
        raw = key(item) if key is not None else item
        if isinstance(raw, DnsPattern):
            pattern = raw
        elif isinstance(raw, str):
            try:
                pattern = _cached(_normalize(raw))
            except InvalidPattern:
                continue
        else:
            raise TypeError(f"expected a DnsPattern or str, got {type(raw).__name__}")
        if not pattern.matches(name):
            continue
        if best_key is None or pattern.sort_key < best_key:
            best, best_key = item, pattern.sort_key
    return best
