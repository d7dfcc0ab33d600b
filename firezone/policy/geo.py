"""Where a client is: country code (for conditions) and coordinates (for selection).

The reference (``Portal.Geo.locate``) asks a MaxMind database first and then
load-balancer headers.  Here the database is an operator-supplied CSV table
of ``network,country[,latitude,longitude]`` rows (longest prefix wins), and
the header names are configurable, defaulting to the reference's Azure Front
Door and GCP ones.  Anything unknown is None: a location condition then
fails and selection falls back to random choice.

Nothing here reads files except :meth:`CidrGeoTable.load`, and nothing
touches the network.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = [
    "COUNTRY_CODES",
    "EARTH_RADIUS_KM",
    "CidrGeoTable",
    "GeoResolver",
    "InvalidGeoTable",
    "Location",
    "haversine_km",
    "normalize_country",
]

EARTH_RADIUS_KM = 6371.0

#: ISO 3166-1 alpha-2 codes (the 249 officially assigned ones).
COUNTRY_CODES: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ
    BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
    CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ
    DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET
    FI FJ FK FM FO FR
    GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY
    HK HM HN HR HT HU
    ID IE IL IM IN IO IQ IR IS IT
    JE JM JO JP
    KE KG KH KI KM KN KP KR KW KY KZ
    LA LB LC LI LK LR LS LT LU LV LY
    MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ
    NA NC NE NF NG NI NL NO NP NR NU NZ
    OM
    PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA
    RE RO RS RU RW
    SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ
    TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ
    UA UG UM US UY UZ
    VA VC VE VG VI VN VU
    WF WS
    YE YT
    ZA ZM ZW
    """.split()
)


class InvalidGeoTable(ValueError):
    """A malformed row in the operator's CIDR-to-country table."""


def normalize_country(value: str | None) -> str | None:
    """An upper-case ISO code, or None for empty/unknown values (``XX``, ``T1``...)."""
    if value is None:
        return None
    code = value.strip().upper()
    return code if code in COUNTRY_CODES else None


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in km between two ``(lat, lon)`` points in degrees."""
    lat1, lon1 = a
    lat2, lon2 = b
    d_lat = math.radians(lat2 - lat1)
    d_lon = math.radians(lon2 - lon1)
    h = (
        math.sin(d_lat / 2) ** 2
        + math.cos(math.radians(lat1)) * math.cos(math.radians(lat2)) * math.sin(d_lon / 2) ** 2
    )
    return EARTH_RADIUS_KM * 2 * math.atan2(math.sqrt(h), math.sqrt(1 - h))


@dataclass(frozen=True)
class Location:
    """What is known about where a peer is; every field may be unknown."""

    country: str | None = None
    city: str | None = None
    lat: float | None = None
    lon: float | None = None

    @property
    def coordinates(self) -> tuple[float, float] | None:
        if self.lat is None or self.lon is None:
            return None
        return (self.lat, self.lon)


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_coordinate(text: str, limit: float, what: str) -> float:
    value = float(text)
    if not math.isfinite(value) or abs(value) > limit:
        raise ValueError(f"{what} {text!r} out of range")
    return value


class CidrGeoTable:
    """Longest-prefix lookup of IP -> Location from operator-supplied rows."""

    def __init__(self, entries: Iterable[tuple[_Network, Location]] = ()) -> None:
        self._by_prefix: dict[tuple[int, int], dict[int, Location]] = {}
        for network, location in entries:
            key = (network.version, network.prefixlen)
            self._by_prefix.setdefault(key, {})[int(network.network_address)] = location
        # Longest prefixes first, per family.
        self._order = sorted(self._by_prefix, key=lambda k: -k[1])

    @classmethod
    def from_csv_lines(cls, lines: Iterable[str]) -> CidrGeoTable:
        """Parse ``network,country[,lat,lon]`` rows; ``#`` comments and blanks are skipped.

        A first row starting with ``network`` is taken as a header.
        """
        entries: list[tuple[_Network, Location]] = []
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = [f.strip() for f in line.split(",")]
            if not entries and fields[0].lower() == "network":
                continue
            if len(fields) not in (2, 4):
                raise InvalidGeoTable(
                    f"line {number}: expected network,country[,latitude,longitude], got {line!r}"
                )
            try:
                network = ipaddress.ip_network(fields[0], strict=False)
            except ValueError:
                raise InvalidGeoTable(f"line {number}: bad network {fields[0]!r}") from None
            country = normalize_country(fields[1])
            if country is None:
                raise InvalidGeoTable(f"line {number}: unknown country code {fields[1]!r}")
            lat = lon = None
            if len(fields) == 4:
                try:
                    lat = _parse_coordinate(fields[2], 90.0, "latitude")
                    lon = _parse_coordinate(fields[3], 180.0, "longitude")
                except ValueError as e:
                    raise InvalidGeoTable(f"line {number}: {e}") from None
            entries.append((network, Location(country, None, lat, lon)))
        return cls(entries)

    @classmethod
    def load(cls, path: str) -> CidrGeoTable:
        with open(path, encoding="utf-8") as f:
            return cls.from_csv_lines(f)

    def lookup(self, ip: IpAddress | str) -> Location | None:
        address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        value = int(address)
        bits = address.max_prefixlen
        for version, prefixlen in self._order:
            if version != address.version:
                continue
            masked = value & (((1 << prefixlen) - 1) << (bits - prefixlen))
            found = self._by_prefix[(version, prefixlen)].get(masked)
            if found is not None:
                return found
        return None

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_prefix.values())


def _header_map(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if key not in out:
            out[key] = value
    return out


def _parse_coordinates(text: str | None) -> tuple[float | None, float | None]:
    if not text:
        return (None, None)
    parts = text.split(",")
    if len(parts) != 2:
        return (None, None)
    try:
        return (
            _parse_coordinate(parts[0].strip(), 90.0, "latitude"),
            _parse_coordinate(parts[1].strip(), 180.0, "longitude"),
        )
    except ValueError:
        return (None, None)


@dataclass(frozen=True)
class GeoResolver:
    """Locate a peer from its IP (table first) and then from trusted proxy headers.

    Only enable the headers when a load balancer you control sets them: a
    client can send them itself otherwise.
    """

    table: CidrGeoTable | None = None
    country_headers: tuple[str, ...] = ("x-azure-geo-country", "x-geo-location-region")
    city_header: str | None = "x-geo-location-city"
    coordinates_header: str | None = "x-geo-location-coordinates"

    def locate(
        self,
        ip: IpAddress | str | None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> Location:
        if ip is not None and self.table is not None:
            try:
                found = self.table.lookup(ip)
            except ValueError:
                found = None
            if found is not None:
                return found
        h = _header_map(headers)
        country = None
        for name in self.country_headers:
            country = normalize_country(h.get(name.lower()))
            if country is not None:
                break
        city = h.get(self.city_header.lower()) if self.city_header else None
        lat, lon = (
            _parse_coordinates(h.get(self.coordinates_header.lower()))
            if self.coordinates_header
            else (None, None)
        )
        return Location(country, city or None, lat, lon)
