"""Tests for firezone.control.fatal: stop the reactor, exit status set at interpreter exit."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from firezone.control import fatal


class StopWithStatusTests(SynchronousTestCase):
    def test_running_reactor_stopped(self) -> None:
        """A running reactor is stopped now and the exit status hook is registered."""
        reactor = MemoryReactor()
        reactor.running = True
        registered: list[tuple[Any, ...]] = []
        fatal.stop_with_status(reactor, 1, register=lambda *a: registered.append(a))
        self.assertTrue(reactor.hasStopped)
        self.assertEqual(registered, [(fatal._exit_now, 1)])

    def test_not_yet_running(self) -> None:
        """Before the reactor runs, the stop waits for it to start."""
        reactor = MemoryReactor()
        fatal.stop_with_status(reactor, 3, register=lambda *a: None)
        self.assertFalse(reactor.hasStopped)
        [(hook, args, kwargs)] = reactor.whenRunningHooks
        reactor.running = True
        hook(*args, **kwargs)
        self.assertTrue(reactor.hasStopped)

    def test_exit_now_uses_status(self) -> None:
        """The hook ends the process with the given status."""
        calls: list[int] = []
        self.patch(fatal.os, "_exit", calls.append)
        fatal._exit_now(1)
        self.assertEqual(calls, [1])
