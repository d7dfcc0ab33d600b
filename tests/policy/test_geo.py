"""Tests for firezone.policy.geo: country codes, haversine, CIDR table, header resolver."""

from __future__ import annotations

import ipaddress
import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from firezone.policy.geo import (
    COUNTRY_CODES,
    EARTH_RADIUS_KM,
    CidrGeoTable,
    GeoResolver,
    InvalidGeoTable,
    Location,
    haversine_km,
    normalize_country,
)

TABLE = """\
network,country,latitude,longitude
# operator's table
203.0.113.0/24,DE,52.52,13.40
203.0.113.128/25,FR
198.51.100.0/24,us
2001:db8::/32,JP,35.68,139.69

2001:db8:1::/48,KR
"""


class CountryTests(SynchronousTestCase):
    def test_codes(self) -> None:
        """The 249 ISO 3166-1 alpha-2 codes are known; placeholders are not."""
        self.assertEqual(len(COUNTRY_CODES), 249)
        for code in ["US", "DE", "GB", "AX", "SS", "BQ"]:
            self.assertIn(code, COUNTRY_CODES)
        for code in ["UK", "XX", "T1", "EU", "XK", "ZZ"]:
            self.assertNotIn(code, COUNTRY_CODES)

    def test_normalize(self) -> None:
        """Codes are upper-cased; unknown or empty values become None."""
        self.assertEqual(normalize_country(" de "), "DE")
        for value in [None, "", "XX", "T1", "Germany"]:
            self.assertIsNone(normalize_country(value))


class HaversineTests(SynchronousTestCase):
    def test_known_distances(self) -> None:
        """Berlin-Paris ~878 km; quarter meridian = pi/2 * R; zero for one point."""
        self.assertLess(abs(haversine_km((52.52, 13.40), (48.86, 2.35)) - 878), 5)
        self.assertAlmostEqual(
            haversine_km((0, 0), (90, 0)), EARTH_RADIUS_KM * 3.141592653589793 / 2
        )
        self.assertEqual(haversine_km((10, 20), (10, 20)), 0.0)

    def test_symmetric_and_antipodal(self) -> None:
        """Distance is symmetric and bounded by half the circumference."""
        a, b = (40.71, -74.01), (35.68, 139.69)
        self.assertAlmostEqual(haversine_km(a, b), haversine_km(b, a))
        self.assertAlmostEqual(haversine_km((0, 0), (0, 180)), EARTH_RADIUS_KM * 3.141592653589793)


class CidrGeoTableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.table = CidrGeoTable.from_csv_lines(TABLE.splitlines())

    def test_longest_prefix_wins(self) -> None:
        """The most specific network containing the IP decides."""
        self.assertEqual(self.table.lookup("203.0.113.5"), Location("DE", None, 52.52, 13.40))
        self.assertEqual(self.table.lookup("203.0.113.200"), Location("FR"))
        self.assertEqual(self.table.lookup("2001:db8:1::9"), Location("KR"))
        self.assertEqual(self.table.lookup("2001:db8:2::9"), Location("JP", None, 35.68, 139.69))
        self.assertEqual(self.table.lookup("198.51.100.1"), Location("US"))
        self.assertEqual(len(self.table), 5)

    def test_miss_and_mapped(self) -> None:
        """Unknown IPs give None; IPv4-mapped IPv6 is looked up as IPv4."""
        self.assertIsNone(self.table.lookup("192.0.2.1"))
        self.assertIsNone(self.table.lookup(ipaddress.ip_address("2001:db9::1")))
        self.assertEqual(self.table.lookup("::ffff:203.0.113.5").country, "DE")  # type: ignore[union-attr]

    def test_bad_rows(self) -> None:
        """Malformed rows raise InvalidGeoTable with the line number."""
        for row, fragment in [
            ("not-a-net,DE", "bad network"),
            ("10.0.0.0/8,XX", "unknown country"),
            ("10.0.0.0/8", "expected network"),
            ("10.0.0.0/8,DE,91,0", "latitude"),
            ("10.0.0.0/8,DE,0,181", "longitude"),
            ("10.0.0.0/8,DE,abc,0", "line 2"),
        ]:
            with self.subTest(row=row):
                with self.assertRaises(InvalidGeoTable) as ctx:
                    CidrGeoTable.from_csv_lines(["# header comment", row])
                self.assertIn(fragment, str(ctx.exception))

    def test_load_from_file(self) -> None:
        """load() reads the same format from a path."""
        fd, path = tempfile.mkstemp(suffix=".csv")
        self.addCleanup(os.unlink, path)
        with os.fdopen(fd, "w") as f:
            f.write(TABLE)
        self.assertEqual(CidrGeoTable.load(path).lookup("203.0.113.5").country, "DE")  # type: ignore[union-attr]


class GeoResolverTests(SynchronousTestCase):
    def test_table_first(self) -> None:
        """A table hit wins over headers."""
        resolver = GeoResolver(table=CidrGeoTable.from_csv_lines(TABLE.splitlines()))
        found = resolver.locate("203.0.113.5", {"X-Azure-Geo-Country": "US"})
        self.assertEqual(found.country, "DE")
        self.assertEqual(found.coordinates, (52.52, 13.40))

    def test_headers(self) -> None:
        """Azure country header, else GCP region/city/coordinates; names case-insensitive."""
        resolver = GeoResolver()
        self.assertEqual(
            resolver.locate("192.0.2.1", {"x-azure-geo-country": "fr"}), Location("FR")
        )
        gcp = [
            ("X-Geo-Location-Region", "US"),
            ("X-Geo-Location-City", "Ashburn"),
            ("X-Geo-Location-Coordinates", "39.04,-77.49"),
        ]
        self.assertEqual(resolver.locate(None, gcp), Location("US", "Ashburn", 39.04, -77.49))

    def test_unknown_values(self) -> None:
        """Placeholders, empty or malformed header values give unknowns."""
        resolver = GeoResolver()
        self.assertEqual(resolver.locate("192.0.2.1", {}), Location())
        self.assertEqual(
            resolver.locate(
                "192.0.2.1",
                {"x-azure-geo-country": "XX", "x-geo-location-coordinates": "north,west"},
            ),
            Location(),
        )
        self.assertIsNone(resolver.locate(None, {"x-geo-location-coordinates": "95,0"}).coordinates)

    def test_configurable_headers(self) -> None:
        """Operators can name their own headers or disable them."""
        resolver = GeoResolver(
            country_headers=("cf-ipcountry",), city_header=None, coordinates_header=None
        )
        headers = {
            "CF-IPCountry": "se",
            "x-azure-geo-country": "US",
            "x-geo-location-city": "Kista",
            "x-geo-location-coordinates": "1,2",
        }
        self.assertEqual(resolver.locate("192.0.2.1", headers), Location("SE"))
        self.assertEqual(GeoResolver(country_headers=()).locate(None, headers).country, None)
