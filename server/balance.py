"""Keeping the workers' shares of keep-alive connections even.

With ``SO_REUSEPORT`` the kernel gives each new connection to a worker by a hash of its
addresses, and a keep-alive connection stays with that worker for good. A client with
a few long-lived connections therefore loads the workers unevenly: in a measured run
of ``bench.serve``, 64 connections over 2 workers split 37/27. Both workers had the
CPU they could get, so they answered about as many requests each, and the requests of
the worker with 37 connections waited 37/27 as long (closed-loop latency is the
connections a worker holds over its throughput).

Each worker publishes how many connections it holds in an array shared by all
workers. A worker that holds more than its fair share (the mean, rounded up) plus a
slack answers that many requests with ``Connection: close``; the clients connect again
and the kernel's hash places those connections anew, so the counts converge within a
few rounds. A connection that is closed this way costs its client one new connection;
it happens only while the counts are uneven.
"""

from __future__ import annotations

import math
from collections.abc import MutableSequence

__all__ = ["ConnectionBalance"]

#: Connections a worker may hold above the fair share before it hands some back.
DEFAULT_SLACK = 1


class ConnectionBalance:
    """One worker's view of the connections all workers hold.

    Parameters
    ----------
    counts
        One integer per worker, shared by all of them (a ``multiprocessing`` array).
    index
        This worker's place in ``counts``.
    slack
        Connections above the fair share that are kept.

    Examples
    --------
    >>> counts = [0, 27]
    >>> balance = ConnectionBalance(counts, 0)
    >>> balance.update(37)  # fair share: 32, slack 1
    4
    >>> [balance.shed() for _ in range(5)]
    [True, True, True, True, False]
    >>> counts[1] = 31  # the clients connected again; two of the four came back here
    >>> balance.update(33)
    0
    """

    def __init__(
        self, counts: MutableSequence[int], index: int, slack: int = DEFAULT_SLACK
    ) -> None:
        if not 0 <= index < len(counts):
            raise ValueError(f"index {index} is not one of {len(counts)} workers")
        if slack < 0:
            raise ValueError(f"slack must be >= 0, got {slack}")
        self._counts = counts
        self._index = index
        self._slack = slack
        self._excess = 0
        #: Connections closed to balance the workers, in this worker.
        self.shed_total = 0

    def update(self, connections: int) -> int:
        """Publish this worker's ``connections``; returns how many it will hand back."""
        counts = self._counts
        counts[self._index] = connections
        fair = math.ceil(sum(counts) / len(counts))
        self._excess = max(0, connections - fair - self._slack)
        return self._excess

    def shed(self) -> bool:
        """Whether to close the connection of the response being written."""
        if not self._excess:
            return False
        self._excess -= 1
        self.shed_total += 1
        return True
