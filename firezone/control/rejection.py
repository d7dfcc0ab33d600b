"""What a refused WebSocket upgrade tells the channel (REFERENCE 1.1 "Connect rejections").

The portal answers a bad upgrade with an HTTP status, a problem-details body
(``code`` says whether the token is to blame) and, for rate limiting, a
``Retry-After`` header.  This turns that response into a
:class:`~firezone.control.channel.ConnectFailure`; the body is only believed
when the ``Content-Type`` says ``application/problem+json``, as connlib does,
so a proxy's HTML error page is never misread.
"""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import parsedate_to_datetime

from firezone.control.channel import ConnectFailure
from firezone.wire.phoenix import PhoenixDecodeError, ProblemDetails, is_problem_json

__all__ = ["failure_from_response", "parse_retry_after", "problem_from_response"]


def parse_retry_after(value: str | None, now: float) -> float | None:
    """RFC 9110 10.2.3: delay-seconds or an HTTP-date; ``now`` is unix time.

    Like connlib: a date in the past means retry at once, and anything else
    (negative or fractional seconds, garbage) is ignored.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit() and value.isascii():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def problem_from_response(headers: Mapping[str, str], body: bytes) -> ProblemDetails | None:
    """The problem-details body, if announced and well-formed; headers keyed in lower case."""
    if not is_problem_json(headers.get("content-type")):
        return None
    try:
        return ProblemDetails.decode(body)
    except PhoenixDecodeError:
        return None


def failure_from_response(
    status: int, reason_phrase: str, headers: Mapping[str, str], body: bytes, now: float
) -> ConnectFailure:
    """Describe a non-101 answer to the upgrade; ``headers`` keyed in lower case."""
    problem = problem_from_response(headers, body)
    code = problem.code if problem else None
    detail = problem.detail if problem else None
    retry_after = parse_retry_after(headers.get("retry-after"), now)
    text = f"the portal refused the connection: HTTP {status}"
    if reason_phrase:
        text += f" {reason_phrase}"
    if code:
        text += f" ({code})"
    if detail:
        text += f": {detail}"
    return ConnectFailure(text, status=status, retry_after=retry_after, code=code, detail=detail)
