"""Tests for firezone.relay.nonces."""

from __future__ import annotations

import random
import uuid

from twisted.trial.unittest import SynchronousTestCase

from firezone.relay.nonces import NONCE_USES, NonceCheck, Nonces

A = ("192.0.2.1", 1)
B = ("192.0.2.1", 2)


class NoncesTests(SynchronousTestCase):
    def test_fixed_number_of_uses(self) -> None:
        """A nonce is valid for NONCE_USES requests, then used up and forgotten."""
        nonces = Nonces(random.Random(0))
        value = uuid.UUID(nonces.issue(A))
        for _ in range(NONCE_USES):
            self.assertIs(nonces.use(A, value), NonceCheck.OK)
        self.assertIs(nonces.use(A, value), NonceCheck.USED_UP)
        self.assertIs(nonces.use(A, value), NonceCheck.UNKNOWN)
        self.assertNotEqual(uuid.UUID(nonces.issue(A)), value)

    def test_reissue_and_per_client(self) -> None:
        """The same client gets the same nonce back; another client's nonce is unknown."""
        nonces = Nonces(random.Random(0), uses=2)
        first = nonces.issue(A)
        self.assertEqual(nonces.issue(A), first)
        self.assertIs(nonces.use(B, uuid.UUID(first)), NonceCheck.UNKNOWN)
        nonces.use(A, uuid.UUID(first))
        nonces.use(A, uuid.UUID(first))
        self.assertNotEqual(nonces.issue(A), first)

    def test_capacity_evicts_oldest(self) -> None:
        """At most ``capacity`` clients are remembered; the oldest is forgotten first."""
        nonces = Nonces(random.Random(0), capacity=3)
        issued = {port: nonces.issue(("192.0.2.1", port)) for port in range(5)}
        self.assertEqual(len(nonces), 3)
        self.assertIs(nonces.use(("192.0.2.1", 0), uuid.UUID(issued[0])), NonceCheck.UNKNOWN)
        self.assertIs(nonces.use(("192.0.2.1", 4), uuid.UUID(issued[4])), NonceCheck.OK)
