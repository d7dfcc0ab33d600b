"""Tests for firezone.dns_pattern: matching, specificity and validation."""

from __future__ import annotations

import fnmatch

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.dns_pattern import (
    DnsPattern,
    InvalidPattern,
    best_match,
    normalize_name,
    validate_pattern,
)

# (pattern, name, matches)
MATCH_TABLE: list[tuple[str, str, bool]] = [
    # exact names, case and trailing dot
    ("example.com", "example.com", True),
    ("example.com", "EXAMPLE.Com", True),
    ("Example.COM", "example.com.", True),
    ("example.com.", "example.com", True),
    ("example.com", "www.example.com", False),
    ("www.example.com", "example.com", False),
    ("example.com", "example.co", False),
    # '*' is one label, and a leading '*.' also matches the bare remainder
    ("*.example.com", "foo.example.com", True),
    ("*.example.com", "example.com", True),
    ("*.example.com", "EXAMPLE.COM.", True),
    ("*.example.com", "a.b.example.com", False),
    ("*.example.com", "fooexample.com", False),
    ("foo.*.com", "foo.bar.com", True),
    ("foo.*.com", "foo.com", False),
    ("foo.*.com", "foo.a.b.com", False),
    ("*.*.example.com", "a.b.example.com", True),
    ("*.*.example.com", "a.example.com", False),
    ("*.*.example.com", "example.com", False),
    # '*' inside a label is any run of characters within that label
    ("*ample.com", "example.com", True),
    ("*ample.com", "ample.com", True),
    ("*ample.com", "a.example.com", False),
    ("ex*le.com", "example.com", True),
    ("ex*le.com", "exle.com", True),
    ("ex*le.com", "ex.le.com", False),
    # '**' is any number of labels, zero included
    ("**.example.com", "example.com", True),
    ("**.example.com", "a.example.com", True),
    ("**.example.com", "a.b.example.com", True),
    ("**.example.com", "a.b.c.d.example.com", True),
    ("**.example.com", "example.org", False),
    ("**.example.com", "badexample.com", False),
    ("a.**.z.com", "a.z.com", True),
    ("a.**.z.com", "a.b.c.z.com", True),
    ("a.**.z.com", "b.z.com", False),
    ("app.**", "app", True),
    ("app.**", "app.internal.corp", True),
    ("app.**", "apps.internal", False),
    ("**.**.example.com", "example.com", True),
    ("**.**.example.com", "x.y.example.com", True),
    # '?' is exactly one character inside a label
    ("?.example.com", "a.example.com", True),
    ("?.example.com", "ab.example.com", False),
    ("?.example.com", "example.com", False),
    ("??.example.com", "ab.example.com", True),
    ("??.example.com", "a.example.com", False),
    ("a?c.example.com", "abc.example.com", True),
    ("a?c.example.com", "a.c.example.com", False),
    ("web-?.example.com", "WEB-1.example.com", True),
    # malformed names never match
    ("**.example.com", "a..example.com", False),
    ("**.example.com", "", False),
    ("**.example.com", ".", False),
]

# The reference `pattern_ordering` test: most specific first.
REFERENCE_ORDER = [
    "example.com",
    "bar.example.com",
    "*.bar.example.com",
    "foo.example.com",
    "?.example.com",
    "*.example.com",
    "**.example.com",
    "*ample.com",
    "*.com",
]

VALID = [
    ("example.com", "example.com"),
    ("  Example.COM.  ", "example.com"),
    ("*.Example.com", "*.example.com"),
    ("**.example.com", "**.example.com"),
    ("?.example.com", "?.example.com"),
    ("*ample.com", "*ample.com"),
    ("*.corp", "*.corp"),
    ("intranet", "intranet"),
    ("app.**.internal", "app.**.internal"),
    ("_sip._tcp.example.com", "_sip._tcp.example.com"),
    ("Bücher.example", "bücher.example"),
    ("a" * 63 + ".com", "a" * 63 + ".com"),
    ("web-1.example.com", "web-1.example.com"),
]

INVALID = [
    ("", "empty"),
    ("   ", "empty"),
    (".", "empty"),
    ("a..example.com", "empty label"),
    (".example.com", "empty label"),
    ("**", "only of wildcards"),
    ("*", "only of wildcards"),
    ("*.*", "only of wildcards"),
    ("?.**", "only of wildcards"),
    ("a" * 64 + ".com", "longer than 63"),
    (".".join(["abcdefghi"] * 26), "at most 253"),
    ("exa mple.com", "invalid characters"),
    ("exa/mple.com", "invalid characters"),
    ("[ab].example.com", "invalid characters"),
    ("example.com:8080", "port"),
    ("-a.example.com", "start or end with '-'"),
    ("a-.example.com", "start or end with '-'"),
    ("a**.example.com", "whole label"),
    ("***.example.com", "whole label"),
    ("example.*", "top-level label"),
    ("example.c?m", "top-level label"),
    ("foo.localhost", "localhost"),
    ("*.com", "solely of wildcards"),
    ("?.com", "solely of wildcards"),
    ("**.com", "solely of wildcards"),
    ("*.*.uk", "solely of wildcards"),
    ("1.2.3.4", "IP address"),
    ("10.0.0.0/8", "IP address"),
]


def reference_match(pattern: str, name: str) -> bool:
    """An independent label-recursive matcher used as an oracle."""
    p = pattern.strip().lower().removesuffix(".").split(".")
    n_norm = normalize_name(name)
    if n_norm is None:
        return False
    n = n_norm.split(".")
    rest = p[1:]
    if p[0] == "*" and rest and not any("*" in lb or "?" in lb for lb in rest):
        if n == rest:
            return True

    def go(pi: int, ni: int) -> bool:
        if pi == len(p):
            return ni == len(n)
        if p[pi] == "**":
            return any(go(pi + 1, k) for k in range(ni, len(n) + 1))
        if ni == len(n):
            return False
        return fnmatch.fnmatchcase(n[ni], p[pi]) and go(pi + 1, ni + 1)

    return go(0, 0)


PATTERN_LABELS = st.sampled_from(["a", "b", "ab", "a?", "?", "??", "*", "a*", "*b", "**"])
NAME_LABELS = st.sampled_from(["a", "b", "ab", "ba", "aa", "abb", "x"])


class DnsPatternMatchTests(SynchronousTestCase):
    def test_match_table(self) -> None:
        """Every row of the match table gives the expected answer."""
        for pattern, name, expected in MATCH_TABLE:
            with self.subTest(pattern=pattern, name=name):
                self.assertEqual(DnsPattern(pattern).matches(name), expected)

    def test_match_table_agrees_with_oracle(self) -> None:
        """The oracle used by the property test agrees with the hand-written table."""
        for pattern, name, expected in MATCH_TABLE:
            with self.subTest(pattern=pattern, name=name):
                self.assertEqual(reference_match(pattern, name), expected)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(PATTERN_LABELS, min_size=1, max_size=5),
        st.lists(NAME_LABELS, min_size=1, max_size=6),
    )
    def test_matches_like_label_glob(self, plabels: list[str], nlabels: list[str]) -> None:
        """matches() equals a label-by-label glob with '**' spanning any labels."""
        pattern, name = ".".join(plabels), ".".join(nlabels)
        try:
            compiled = DnsPattern(pattern)
        except InvalidPattern:
            assume(False)
            return
        self.assertEqual(compiled.matches(name), reference_match(pattern, name))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(NAME_LABELS, min_size=1, max_size=5), st.data())
    def test_case_insensitive(self, labels: list[str], data: st.DataObject) -> None:
        """A name matches its own pattern whatever the case of either side."""
        name = ".".join(labels)
        flips = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        shouted = "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True))
        self.assertTrue(DnsPattern(name).matches(shouted))
        self.assertTrue(DnsPattern(shouted).matches(name + "."))
        self.assertTrue(DnsPattern("**." + shouted).matches("x.y." + name))

    def test_equality_uses_normalised_text(self) -> None:
        """Patterns differing only in case or trailing dot are equal and hash alike."""
        self.assertEqual(DnsPattern("Example.com."), DnsPattern("example.com"))
        self.assertEqual(len({DnsPattern("A.com"), DnsPattern("a.com.")}), 1)
        self.assertNotEqual(DnsPattern("*.a.com"), DnsPattern("**.a.com"))

    def test_constructor_rejects_bad_structure(self) -> None:
        """DnsPattern refuses structurally broken patterns with InvalidPattern."""
        for bad in ("", "a..b", "**", "a**.com", "a b.com", None):
            with self.subTest(bad=bad):
                self.assertRaises(InvalidPattern, DnsPattern, bad)

    def test_client_side_accepts_wildcard_tld(self) -> None:
        """The client-side parser accepts what only the portal forbids (wildcard TLD)."""
        self.assertTrue(DnsPattern("example.*").matches("example.org"))
        self.assertRaises(InvalidPattern, validate_pattern, "example.*")


class DnsPatternSpecificityTests(SynchronousTestCase):
    def test_reference_ordering(self) -> None:
        """Sorting by sort_key reproduces the reference pattern_ordering table."""
        shuffled = sorted(REFERENCE_ORDER, key=lambda p: p[::-1])
        ordered = sorted(shuffled, key=lambda p: DnsPattern(p).sort_key)
        self.assertEqual(ordered, REFERENCE_ORDER)
        self.assertEqual([str(p) for p in sorted(map(DnsPattern, shuffled))], REFERENCE_ORDER)

    def test_exact_beats_question_beats_star_beats_double_star(self) -> None:
        """For one name: exact < '?' < '*' < '**' in specificity."""
        chain = ["a.example.com", "?.example.com", "*.example.com", "**.example.com"]
        for pattern in chain:
            self.assertTrue(DnsPattern(pattern).matches("a.example.com"))
        for i in range(len(chain)):
            self.assertEqual(best_match("a.example.com", chain[i:]), chain[i])
            self.assertEqual(best_match("a.example.com", list(reversed(chain[i:]))), chain[i])

    def test_right_to_left_comparison(self) -> None:
        """A literal label nearer the root outweighs wildcards further left."""
        candidates = ["**.example.com", "*.b.example.com", "a.*.example.com"]
        self.assertEqual(best_match("a.b.example.com", candidates), "*.b.example.com")

    def test_label_comparison_not_characters(self) -> None:
        """A label with only '?' is more specific than one with '*' (label-wise rule)."""
        self.assertEqual(best_match("ab.com", ["*b.com", "a?.com"]), "a?.com")
        self.assertEqual(best_match("example.com", ["*.com", "*ample.com"]), "*ample.com")

    def test_exact_beats_implicit_bare_match(self) -> None:
        """example.com beats *.example.com for the bare name."""
        self.assertEqual(best_match("example.com", ["*.example.com", "example.com"]), "example.com")

    def test_best_match_none_and_key(self) -> None:
        """best_match returns None without a match and uses key to reach patterns."""
        self.assertIsNone(best_match("other.org", ["*.example.com", "example.com"]))
        items: list[tuple[str, str | DnsPattern]] = [
            ("r1", "**.corp"),
            ("r2", "db.corp"),
            ("r3", DnsPattern("*.corp")),
        ]
        found = best_match("db.corp", items, key=lambda item: item[1])
        self.assertEqual(found, ("r2", "db.corp"))
        self.assertEqual(best_match("x.corp", items, key=lambda item: item[1]), items[2])

    def test_best_match_skips_unparseable(self) -> None:
        """An unparseable pattern string among candidates is ignored."""
        self.assertEqual(best_match("a.com", ["a..com", "**", "a.com"]), "a.com")

    def test_best_match_first_wins_ties(self) -> None:
        """Equal patterns tie; the first one in iteration order wins."""
        items = [("first", "a.com"), ("second", "A.com.")]
        self.assertEqual(best_match("a.com", items, key=lambda i: i[1]), items[0])

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.lists(PATTERN_LABELS, min_size=1, max_size=4), min_size=1, max_size=6),
        st.lists(NAME_LABELS, min_size=1, max_size=5),
    )
    def test_best_match_is_minimum_of_matches(
        self, pattern_lists: list[list[str]], nlabels: list[str]
    ) -> None:
        """best_match is the matching pattern with the smallest sort key."""
        name = ".".join(nlabels)
        patterns = []
        for labels in pattern_lists:
            try:
                patterns.append(DnsPattern(".".join(labels)))
            except InvalidPattern:
                pass
        matching = [p for p in patterns if p.matches(name)]
        found = best_match(name, patterns)
        if not matching:
            self.assertIsNone(found)
        else:
            assert found is not None
            self.assertEqual(found.sort_key, min(p.sort_key for p in matching))
        if name not in {p.pattern for p in patterns}:
            # Adding the exact name always wins.
            self.assertEqual(best_match(name, [*patterns, DnsPattern(name)]), DnsPattern(name))


class ValidatePatternTests(SynchronousTestCase):
    def test_valid_patterns_normalised(self) -> None:
        """Accepted patterns come back lower-cased, trimmed and without trailing dot."""
        for given_, expected in VALID:
            with self.subTest(pattern=given_):
                self.assertEqual(validate_pattern(given_), expected)

    def test_invalid_patterns(self) -> None:
        """Each invalid pattern raises InvalidPattern naming the problem."""
        for bad, fragment in INVALID:
            with self.subTest(pattern=bad):
                with self.assertRaises(InvalidPattern) as ctx:
                    validate_pattern(bad)
                self.assertIn(fragment, str(ctx.exception))

    def test_invalid_pattern_is_value_error(self) -> None:
        """InvalidPattern is a ValueError so callers may catch either."""
        self.assertRaises(ValueError, validate_pattern, "a..b")

    def test_length_boundary(self) -> None:
        """253 characters are accepted, 254 refused."""
        name = ".".join(["a" * 62] * 4)  # 251
        self.assertEqual(len(name + ".ab"), 254)
        self.assertEqual(validate_pattern(name[:-2] + ".ab"), name[:-2] + ".ab")
        self.assertRaises(InvalidPattern, validate_pattern, name + ".ab")

    def test_non_string_refused(self) -> None:
        """A non-string is refused with InvalidPattern, not a TypeError."""
        self.assertRaises(InvalidPattern, validate_pattern, None)  # type: ignore[arg-type]
