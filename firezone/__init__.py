"""Firezone in Python on Twisted: a zero-trust remote-access system."""

__version__ = "0.1.0"
