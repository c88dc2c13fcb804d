"""What a client knows of its pool and of each address: snapshots, and the live record."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a client's pool, from :meth:`RemotingClient.pool_stats`."""

    #: Connections open now.
    open: int
    #: Open connections with a request of ours in flight.
    active: int
    #: Open connections with nothing of ours in flight.
    idle: int
    #: Connect attempts under way (or waiting for their backoff).
    connecting: int
    #: Connections made since the client started.
    created: int
    #: Connections closed since the client started.
    closed: int
    #: Connect attempts that failed.
    failed_connects: int
    #: Calls made (invoke and invoke_oneway).
    requests: int
    #: Calls that failed, whatever the reason.
    errors: int
    #: Requests sent and waiting for their response.
    in_flight: int
    #: The configured limit on connections (None: none).
    max_connections: int | None

    @property
    def utilization(self) -> float:
        """Open connections over ``max_connections``; without a limit, active over open."""
        if self.max_connections is not None:
            return (self.open + self.connecting) / self.max_connections
        return self.active / self.open if self.open else 0.0

    @property
    def error_rate(self) -> float:
        """Failed calls over calls made (0.0 before the first call)."""
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Every field and the two ratios, for printing as JSON."""
        return {**asdict(self), "utilization": self.utilization, "error_rate": self.error_rate}


@dataclass(frozen=True)
class AddressHealth:
    """What the client knows of connecting to one address (:meth:`RemotingClient.health`)."""

    address: str
    #: ``"closed"`` (connects allowed, perhaps after a backoff), ``"open"`` (calls fail
    #: fast) or ``"half-open"`` (the next connect is a trial).
    breaker: str
    consecutive_failures: int
    #: Seconds until the next connect attempt is allowed (0.0: now).
    retry_in: float
    #: Why the last connect failed (None if it did not).
    last_error: str | None
    #: Average latency of recent calls and connects, in seconds (None before any).
    latency: float | None
    #: Consecutive failed calls (connect failures, timeouts, lost connections).
    consecutive_errors: int


class _Health:
    __slots__ = ("consecutive_errors", "failures", "last_error", "latency", "open", "retry_at")

    def __init__(self) -> None:
        self.failures = 0  # consecutive failed connects
        self.retry_at = 0.0  # no connect attempt before this time
        self.open = False
        self.last_error: str | None = None
        self.latency: float | None = None  # moving average, for name-server choice
        self.consecutive_errors = 0  # failed calls, for name-server choice
