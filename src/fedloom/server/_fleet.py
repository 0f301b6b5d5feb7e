"""The fleet: the one interface between the round loop and the clients.

Simulation, gRPC deployment and test doubles each implement it; the loop cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from fedloom.messages import Instruction, Reply

__all__ = ["Fleet"]


class Fleet(Protocol):
    """Sends instructions to clients and yields the replies that arrive before a deadline."""

    def clients(self) -> Sequence[str]:
        """The ids of the clients available now."""
        ...

    def exchange(
        self, instructions: Mapping[str, Instruction], timeout: float | None
    ) -> Iterator[Reply]:
        """Deliver ``instructions`` (client id -> instruction) and yield replies as they arrive.

        Replies that are not in by ``timeout`` seconds (no limit when ``None``) are dropped; a
        client that fails or disconnects simply does not reply. Replies may come in any order.
        """
        ...

    def close(self) -> None:
        """Release the fleet's workers or connections."""
        ...
