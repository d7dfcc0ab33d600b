"""Tests for firezone.control.rejection: refused upgrades as ConnectFailure values."""

from __future__ import annotations

import json
from email.utils import formatdate
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from firezone.control.rejection import (
    failure_from_response,
    parse_retry_after,
    problem_from_response,
)

VECTORS = Path("/work/shared/vectors/firezone-messages")
NOW = 1_750_000_000.0


class RetryAfterTests(SynchronousTestCase):
    def test_seconds(self) -> None:
        """RFC 9110 10.2.3: 'Retry-After: 120' means 120 s."""
        self.assertEqual(parse_retry_after("120", NOW), 120.0)
        self.assertEqual(parse_retry_after(" 0 ", NOW), 0.0)

    def test_http_date(self) -> None:
        """An HTTP-date counts from now; one in the past means at once."""
        self.assertEqual(parse_retry_after(formatdate(NOW + 60, usegmt=True), NOW), 60.0)
        self.assertEqual(parse_retry_after(formatdate(NOW - 60, usegmt=True), NOW), 0.0)

    def test_invalid_ignored(self) -> None:
        """Negative, fractional or garbage values are ignored, as connlib does."""
        for value in (None, "", "-1", "12.5", "soon", "\u0661\u0662"):
            self.assertIsNone(parse_retry_after(value, NOW), value)


class ResponseTests(SynchronousTestCase):
    def test_problem_vectors(self) -> None:
        """The body is read only with a problem+json Content-Type (vectors 1-7)."""
        for path in sorted(VECTORS.glob("framing__http_problem_details__*.json")):
            vector = json.loads(path.read_text())
            content_type = vector["http"]["content_type"]
            headers = {} if content_type is None else {"content-type": content_type}
            problem = problem_from_response(headers, json.dumps(vector["message"]).encode())
            if vector["expect"] == "parses":
                assert problem is not None, path.name
                self.assertEqual(problem.code, vector["message"].get("code"), path.name)
            else:
                self.assertIsNone(problem, path.name)

    def test_proxy_error_page(self) -> None:
        """A proxy's HTML page or malformed JSON yields no problem details."""
        self.assertIsNone(problem_from_response({"content-type": "text/html"}, b"<html>"))
        self.assertIsNone(problem_from_response(
            {"content-type": "application/problem+json"}, b"{not json"))

    def test_failure_from_401(self) -> None:
        """A 401 invalid_token response carries status, code and detail."""
        body = json.dumps({"type": "about:blank", "title": "Unauthorized", "status": 401,
                           "detail": "Invalid token", "code": "invalid_token"}).encode()
        failure = failure_from_response(
            401, "Unauthorized",
            {"content-type": "application/problem+json; charset=utf-8"}, body, NOW,
        )
        self.assertEqual((failure.status, failure.code, failure.detail, failure.retry_after),
                         (401, "invalid_token", "Invalid token", None))
        self.assertIn("401", failure.description)
        self.assertIn("invalid_token", failure.description)

    def test_failure_from_503(self) -> None:
        """503 rate_limit with Retry-After carries the delay."""
        failure = failure_from_response(
            503, "Service Unavailable",
            {"content-type": "application/problem+json", "retry-after": "7"},
            b'{"status":503,"code":"rate_limit"}', NOW,
        )
        self.assertEqual((failure.status, failure.code, failure.retry_after),
                         (503, "rate_limit", 7.0))
