"""Which idle lanes' cores the LLM may borrow, with a fake clock and a fake board."""

from __future__ import annotations

from ris.preemption.lending import Borrower, Lender, LendingPolicy
from ris.preemption.policy import Activity


class Board:
    def __init__(self, n: int) -> None:
        self.now = 0.0
        self.states = [Activity.IDLE] * n

    def clock(self) -> float:
        return self.now

    def read(self) -> list[int]:
        return [int(s) for s in self.states]


def borrower(board: Board, grace: float = 0.25) -> Borrower:
    policy = LendingPolicy(own=(0,), lenders=(Lender("tts", (1,)), Lender("asr", (2, 3))), idle_grace_s=grace)
    return Borrower(policy, board.read, board.clock)


def test_idle_owners_lend_their_cores_from_the_start() -> None:
    b = borrower(Board(2))
    assert b.cores() == (0, 1, 2, 3)
    assert b.borrowed(b.cores()) == (1, 2, 3)


def test_a_busy_owner_takes_its_cores_back_at_once_and_lends_again_after_the_grace() -> None:
    board = Board(2)
    b = borrower(board)
    assert b.cores() == (0, 1, 2, 3)
    board.states[0] = Activity.BUSY  # a TTS task arrived
    assert b.cores() == (0, 2, 3)
    board.now = 5.0
    assert b.cores() == (0, 2, 3)  # still busy: still its own
    board.states[0] = Activity.IDLE
    board.now = 5.1
    assert b.cores() == (0, 2, 3)  # idle, but within the grace (the next sentence may follow)
    board.now = 5.25
    assert b.cores() == (0, 1, 2, 3)


def test_a_busy_spell_seen_only_between_two_asks_still_counts_from_when_it_was_seen() -> None:
    board = Board(2)
    b = borrower(board, grace=1.0)
    board.states[1] = Activity.PREFILL
    board.now = 2.0
    assert b.cores() == (0, 1)
    board.states[1] = Activity.IDLE
    board.now = 2.5
    assert b.cores() == (0, 1)
    board.now = 3.0
    assert b.cores() == (0, 1, 2, 3)


def test_no_grace_lends_as_soon_as_the_owner_is_idle() -> None:
    board = Board(2)
    b = borrower(board, grace=0.0)
    board.states[0] = Activity.BUSY
    assert b.cores() == (0, 2, 3)
    board.states[0] = Activity.IDLE
    assert b.cores() == (0, 1, 2, 3)
