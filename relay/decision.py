"""What an attempt means for its job: sent, retry at a time, or dead with a reason. Pure.

The worker computes a `Decision` with `decide()` apart from its effects (the
store write), then tells its observers (`Observer`) what happened as a
`Report`: metrics and logs are observers, and so is anything a new kind of
work needs to hear about (the failing-receiver notice), so none of them edits
the worker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Protocol

from relay.config import RetryPolicy
from relay.notify import RECEIVER_FAULT_STATUS, Outcome
from relay.retry import delay_for
from relay.store import Attempt, Job


@dataclass(frozen=True)
class Sent:
    live: str = ""  # what a live send did: post, edit, repost (the old one was gone), skip
    kind: Literal["sent"] = "sent"


@dataclass(frozen=True)
class Retry:
    at: float  # epoch seconds of the next attempt
    delay: float
    error: str
    kind: Literal["retry"] = "retry"


@dataclass(frozen=True)
class Dead:
    reason: str
    # The receiver refused itself (401, 403, 404, 410: credentials, a deleted webhook), not
    # this message: it counts towards the receiver URL's circuit as a retryable failure does.
    receiver_fault: bool = False
    kind: Literal["dead"] = "dead"


@dataclass(frozen=True)
class Postponed:
    """Not attempted (another sender holds its live message, or the store could not be
    asked): pending again at `at`, counting neither an attempt nor a receiver failure."""

    at: float
    why: str
    kind: Literal["postponed"] = "postponed"


Decision = Sent | Retry | Dead | Postponed


def decide(job: Job, outcome: Outcome, policy: RetryPolicy, now: float,
           rng: random.Random) -> Decision:
    """The job's next state after one attempt made at `now` (`rng` draws the jitter)."""
    if outcome.postponed:
        return Postponed(now + outcome.min_delay, outcome.error)
    if outcome.kind == "sent":
        return Sent(outcome.live)
    made = job.attempts + 1
    if outcome.kind == "failed":
        return Dead(outcome.error, receiver_fault=outcome.status in RECEIVER_FAULT_STATUS)
    delay = delay_for(policy, made, outcome.min_delay, now - job.created_at, rng)
    if delay is None:
        return Dead(f"gave up after {made} attempts: {outcome.error}")
    return Retry(now + delay, delay, outcome.error)


def orphaned(receiver: str, url_index: int | None = None) -> Dead:
    """A job whose receiver left the config, or (`url_index`) whose receiver no longer has
    that URL (replay it after a fix). The same words as `notify.Notifier.gone`."""
    if url_index is None:
        return Dead(f"receiver {receiver!r} is no longer in the config")
    return Dead(f"receiver {receiver!r} (URL #{url_index}) is no longer in the config")


@dataclass(frozen=True)
class Report:
    """One recorded decision, as observers see it."""

    job: Job
    attempt: Attempt
    decision: Decision
    circuit_opened: bool = False  # this failure opened the receiver URL's circuit
    attempted: bool = True  # False: no send was made (its receiver is gone, or it was postponed)


class Observer(Protocol):
    """Hears every recorded decision; must not block (it runs on the event loop)."""

    def observe(self, report: Report) -> None: ...
