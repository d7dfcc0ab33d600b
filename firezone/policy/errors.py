"""Validation errors of the policy package, one type per kind of input.

All are ``ValueError`` subclasses so a caller validating user input (portal
API, firezone-ctl) can catch them as one family and show ``str(exc)``.
"""

from __future__ import annotations

__all__ = ["InvalidCondition", "InvalidFilter", "InvalidResource", "InvalidTimeWindow"]


class InvalidCondition(ValueError):
    """A policy condition with an unknown property/operator or malformed values."""


class InvalidTimeWindow(InvalidCondition):
    """A malformed ``current_utc_datetime`` value (day, time range or timezone)."""


class InvalidFilter(ValueError):
    """A resource traffic filter with an unknown protocol or bad port ranges."""


class InvalidResource(ValueError):
    """A resource whose type, address or IP stack cannot be accepted."""
