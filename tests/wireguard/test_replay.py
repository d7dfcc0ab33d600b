"""The RFC 6479 sliding replay window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from firezone.wireguard.constants import REJECT_AFTER_MESSAGES
from firezone.wireguard.replay import WINDOW_SIZE, ReplayWindow


class Model:
    """The specification: a set of seen counters and the highest one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[int] = set()
        self.last = 0

    def accept(self, counter: int) -> bool:
        if counter >= self.limit or counter in self.seen:
            return False
        if counter <= self.last and self.last - counter > WINDOW_SIZE:
            return False
        self.seen.add(counter)
        self.last = max(self.last, counter)
        return True


# Counters as moves relative to the highest one so far: mostly near the window edge,
# sometimes far jumps and absolute values near the limit.
moves = st.lists(
    st.one_of(
        st.integers(-WINDOW_SIZE - 200, 200),
        st.integers(-20000, 20000),
        st.integers(0, 2**20).map(lambda x: ("abs", x)),
        st.integers(REJECT_AFTER_MESSAGES - 5, REJECT_AFTER_MESSAGES + 5).map(lambda x: ("abs", x)),
    ),
    max_size=300,
)


class ReplayWindowTests(SynchronousTestCase):
    def test_window_size(self) -> None:
        """Like wireguard-go: 128 blocks of 64 bits, 127 usable: 8128 counters back."""
        self.assertEqual(WINDOW_SIZE, 8128)

    def test_in_order_and_duplicates(self) -> None:
        """Each counter is accepted once."""
        w = ReplayWindow()
        self.assertTrue(all(w.accept(i) for i in range(1000)))
        self.assertFalse(any(w.accept(i) for i in range(1000)))

    def test_window_edge(self) -> None:
        """A counter exactly WINDOW_SIZE below the highest is accepted, one more is not."""
        w = ReplayWindow()
        self.assertTrue(w.accept(20000))
        self.assertFalse(w.accept(20000 - WINDOW_SIZE - 1))
        self.assertTrue(w.accept(20000 - WINDOW_SIZE))
        self.assertTrue(w.accept(19999))

    def test_limit(self) -> None:
        """Counters >= REJECT_AFTER_MESSAGES are always refused."""
        w = ReplayWindow()
        self.assertFalse(w.accept(REJECT_AFTER_MESSAGES))
        self.assertTrue(w.accept(REJECT_AFTER_MESSAGES - 1))
        self.assertFalse(w.accept(2**64 - 1))

    def test_far_jump_clears(self) -> None:
        """After a jump past the ring, counters aliasing old slots are fresh."""
        w = ReplayWindow()
        for i in range(64):
            w.accept(i)
        self.assertTrue(w.accept(8192 * 3))
        self.assertTrue(w.accept(8192 * 3 - 8192 + 64 + 5))

    @settings(max_examples=200)
    @given(moves)
    def test_matches_model(self, ops: list[int | tuple[str, int]]) -> None:
        """The bitmap window agrees with a set-based model for any sequence."""
        w, model = ReplayWindow(), Model(REJECT_AFTER_MESSAGES)
        for op in ops:
            counter = op[1] if isinstance(op, tuple) else max(0, model.last + op)
            self.assertEqual(w.accept(counter), model.accept(counter), counter)
            self.assertEqual(w.highest, model.last)
