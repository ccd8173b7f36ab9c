"""The driver's bookkeeping of blocks to hand out: waiting, done, and how often each lost its worker.

No Ray here: a block lost with its worker goes back to the front of the queue,
until it has been lost :data:`MAX_ATTEMPTS` times and the run gives up on it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from pipeline.errors import InputError

MAX_ATTEMPTS = 3
"""Times a block may lose its worker before the run gives up on it."""

BlockIndex = tuple[int, ...]


class BlockFailedError(InputError):
    """A block that cannot be computed: its input is unreadable, or it keeps killing workers."""


class BlockQueue:
    """Blocks waiting to be handed out, and how often each lost its worker."""

    def __init__(self, indices: Iterable[BlockIndex], max_attempts: int = MAX_ATTEMPTS):
        self._waiting: deque[BlockIndex] = deque(indices)
        self.total = len(self._waiting)
        self.max_attempts = max_attempts
        self.lost_count: dict[BlockIndex, int] = {}
        self.done: set[BlockIndex] = set()

    def take(self) -> BlockIndex | None:
        """The next block to hand out, or None when none is waiting."""
        return self._waiting.popleft() if self._waiting else None

    def has_waiting(self) -> bool:
        """Whether a block is waiting to be handed out."""
        return bool(self._waiting)

    def finished(self, index: BlockIndex) -> None:
        """A block was written and marked done."""
        self.done.add(index)

    def lost(self, index: BlockIndex, reason: str) -> None:
        """A block's worker went away: queue it again first, or fail it after too many tries."""
        n = self.lost_count.get(index, 0) + 1
        self.lost_count[index] = n
        if n >= self.max_attempts:
            raise BlockFailedError(
                f"block {list(index)}: its worker was lost {n} times ({reason}); giving up"
            )
        self._waiting.appendleft(index)

    @property
    def complete(self) -> bool:
        """Whether every block is done."""
        return len(self.done) == self.total
