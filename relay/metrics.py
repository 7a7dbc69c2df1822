"""Prometheus metrics, one registry per running relay."""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from relay import __version__
from relay.events import KNOWN_TYPES
from relay.store.records import TimerChange

OTHER_TYPE = "other"  # every event type Kourier does not document: labels stay bounded
# Why a job went dead, by the outcome of its last attempt.
TIMER_CHANGES = {"arm": "armed", "open": "armed", "disarm": "disarmed"}
BURIAL_REASONS = {"failed": "failed", "retry": "retries_exhausted"}


def event_type_label(event_type: str) -> str:
    """A label value from payload data must come from a bounded set."""
    return event_type if event_type in KNOWN_TYPES or not event_type else OTHER_TYPE


PREFIX = "kourier_relay_"  # every metric's name starts so


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=r)

        def gauge(name: str, doc: str, *labels: str) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=r)

        self.events = counter("events", "Webhook requests by event type and outcome",
                              "type", "outcome")
        self.notifications = counter(
            "notifications", "Send attempts by receiver and attempt outcome (sent, retry, failed)",
            "receiver", "outcome")
        self.dead_letters = counter(
            "dead_letters", "Jobs that went dead, by receiver and reason (failed, retries_exhausted)",
            "receiver", "reason")
        self.attempt_seconds = Histogram(
            PREFIX + "attempt_seconds", "Time one send attempt took", ["receiver"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30), registry=r)
        self.queue_depth = gauge("queue_depth", "Jobs pending or in flight")
        self.oldest_pending = gauge("oldest_pending_seconds", "Age of the oldest job not yet sent")
        self.dead_jobs = gauge("dead_jobs", "Jobs in the dead-letter list")
        self.reload_success = gauge("config_last_reload_successful",
                                    "1 if the last config (re)load succeeded")
        self.reload_time = gauge("config_last_reload_success_timestamp_seconds",
                                 "When the config was last loaded successfully")
        self.live_messages = counter(
            "live_messages", "Live jobs by receiver and what their send did (post, edit, repost,"
            " skip) or postponed (another sender held the message)", "receiver", "action")
        self.circuit_open = gauge(
            "circuit_open", "1 while a receiver URL's circuit is open (url: its index in the"
            " receiver's urls, never the URL)", "receiver", "url")
        self.timers = counter(
            "timers",
            "Timer changes by kind (watch, digest, quiet) and change (armed, disarmed, fired)",
            "kind", "change")
        self.held = gauge("held_notifications",
                          "Notifications waiting out their receiver's quiet hours")
        self.open_windows = gauge("digest_windows_open", "Digest windows collecting events")
        Info(PREFIX + "build", "Build information", registry=r).info({"version": __version__})

    def store_unknown(self) -> None:
        """The store cannot be read: every gauge read from it is unknown (NaN), never the
        value read before the outage. The worker's next claim of a receiver URL (each second
        once the store answers) sets its circuit again."""
        for gauge in (self.queue_depth, self.dead_jobs, self.held, self.open_windows,
                      self.oldest_pending):
            gauge.set(math.nan)
        for family in self.circuit_open.collect():
            for sample in family.samples:
                self.circuit_open.labels(**sample.labels).set(math.nan)

    def set_circuit(self, receiver: str, url_index: int, is_open: bool) -> None:
        """A receiver URL's circuit. The `url` label is the URL's index as text: the URL
        itself holds secrets, and the index keeps the values bounded by the config."""
        self.circuit_open.labels(receiver, str(url_index)).set(1 if is_open else 0)

    def keep_circuits(self, configured: Iterable[tuple[str, int]]) -> None:
        """Forget the circuits of receiver URLs no longer in the config (a reload removed
        the receiver or the URL): the series stay as many as the config's URLs."""
        keep = {(name, str(index)) for name, index in configured}
        for family in self.circuit_open.collect():
            for sample in family.samples:
                labels = (sample.labels["receiver"], sample.labels["url"])
                if labels not in keep:
                    self.circuit_open.remove(*labels)

    def count_event(self, event_type: str, outcome: str) -> None:
        self.events.labels(event_type_label(event_type), outcome).inc()

    def count_burial(self, receiver: str, outcome_kind: str) -> None:
        """The last attempt's outcome, and the job's burial with its reason."""
        self.notifications.labels(receiver, outcome_kind).inc()
        self.dead_letters.labels(receiver, BURIAL_REASONS.get(outcome_kind, outcome_kind)).inc()

    def count_timers(self, changes: Iterable[TimerChange]) -> None:
        """What an accepted event did to timers (`open` counts as armed)."""
        for change in changes:
            self.timers.labels(change.kind, TIMER_CHANGES[change.action]).inc()
