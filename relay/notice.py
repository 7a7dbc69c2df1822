"""The failing-receiver notice: when a receiver URL's circuit opens, tell the fallback receiver.

An observer of the worker. The notice is a relay-internal event
(`relay.receiver_failing`) about no parcel delivery: its `delivery_id` is
empty, so the store tracks no delivery for it and nothing counts it as one.
It is rendered by the planner with `templates.receiver_failing` (or the
built-in text) and queued as ordinary jobs, with the same retries. It names the
URL whose circuit opened by its index and its redacted label (`escaping.Channel.label`,
e.g. `slack://***`), never the URL itself. When that URL is one of the fallback receiver's
own, the notice goes to its other URLs (each has its own circuit), none if it has one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from relay.decision import Report
from relay.errors import StoreError
from relay.events import Event
from relay.runtime import Runtime
from relay.store import Store

log = logging.getLogger(__name__)
KIND = "relay.receiver_failing"


def notice_event(receiver: str, error: str, now: float, url_index: int = 0, url: str = "",
                 ) -> Event:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    payload = {"event": KIND, "timestamp": stamp, "receiver": receiver, "url": url,
               "url_index": url_index, "error": error}
    return Event(KIND, "", stamp, None, payload)


class FailingReceiverNotice:
    def __init__(self, store: Store, runtime: Callable[[], Runtime], clock: Callable[[], float],
                 spawn: Callable[[str, Coroutine[Any, Any, None]], object]) -> None:
        self.store = store
        self.runtime = runtime
        self.clock = clock
        self.spawn = spawn  # runs the write as a supervised task: observers must not block

    def observe(self, report: Report) -> None:
        fallback = self.runtime().config.sending.fallback_receiver
        receiver = report.job.receiver
        # The fallback's own URL tripped: its other URLs (own circuits) are told, if any.
        own = fallback == receiver and len(self.runtime().planner.channels.get(fallback, ())) < 2
        if report.circuit_opened and fallback and not own:
            self.spawn("receiver-failing notice", self.queue(
                fallback, receiver, report.attempt.error, report.job.url_index))

    async def queue(self, fallback: str, receiver: str, error: str, url_index: int = 0) -> None:
        now = self.clock()
        planner = self.runtime().planner
        channels = planner.channels.get(receiver, ())
        label = channels[url_index].label if url_index < len(channels) else ""
        event = notice_event(receiver, error, now, url_index, label)
        jobs = tuple(j for j in planner.receiver_failing(event, fallback)
                     if fallback != receiver or j.url_index != url_index)
        key = f"circuit:{receiver}:{url_index}:{event.timestamp}"
        try:
            await self.store.accept(event, key, jobs, now=now)
        except StoreError as e:
            log.error("could not queue the failing-receiver notice: %s", e)
