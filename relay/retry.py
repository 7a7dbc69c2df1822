"""Retry policy: when to try a job again, or that it is dead. Pure."""

from __future__ import annotations

import random

from relay.config import RetryPolicy

MIN_WAIT_AFTER_THROTTLE = 60.0  # after a 429 or a timeout, give the far side a minute


def next_delay(policy: RetryPolicy, attempts_made: int, rng: random.Random | None = None,
               ) -> float | None:
    """Seconds until the next attempt after `attempts_made` attempts, or None when none is left.

    `schedule[i]` is the wait before attempt i+1 (the first is usually 0, immediate).
    """
    if attempts_made >= len(policy.schedule):
        return None
    base = policy.schedule[attempts_made]
    spread = (rng or random).uniform(-policy.jitter, policy.jitter)
    return max(0.0, base * (1 + spread))


def delay_for(policy: RetryPolicy, attempts_made: int, min_wait: float, age: float,
              rng: random.Random | None = None) -> float | None:
    """The delay before the next attempt, honouring the far side's minimum and the max age."""
    delay = next_delay(policy, attempts_made, rng)
    if delay is None:
        return None
    delay = max(delay, min_wait)
    if age + delay > policy.max_age:
        return None
    return delay
