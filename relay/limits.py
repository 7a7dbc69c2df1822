"""The two limits the config sets and the store enforces: a rate limit and a circuit breaker.

One definition for both sides, so that what an operator writes is what a
claim applies, with no copy in between.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `count` sends per `per` seconds, bursting to `count`."""

    count: int
    per: float  # seconds

    @property
    def per_second(self) -> float:
        return self.count / self.per


@dataclass(frozen=True)
class Circuit:
    """Pause a receiver after `failures` failures in a row for `cooldown`, doubling to the max."""

    failures: int = 5
    cooldown: float = 60.0
    max_cooldown: float = 600.0
