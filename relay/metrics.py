"""Prometheus metrics, one registry per running relay."""

from __future__ import annotations

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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("kourier_relay_events", "Webhook requests by event type and outcome",
                              ["type", "outcome"], registry=r)
        self.notifications = Counter(
            "kourier_relay_notifications",
            "Send attempts by receiver and attempt outcome (sent, retry, failed)",
            ["receiver", "outcome"], registry=r)
        self.dead_letters = Counter(
            "kourier_relay_dead_letters",
            "Jobs that went dead, by receiver and reason (failed, retries_exhausted)",
            ["receiver", "reason"], registry=r)
        self.attempt_seconds = Histogram(
            "kourier_relay_attempt_seconds", "Time one send attempt took", ["receiver"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30), registry=r)
        self.queue_depth = Gauge("kourier_relay_queue_depth", "Jobs pending or in flight",
                                 registry=r)
        self.oldest_pending = Gauge("kourier_relay_oldest_pending_seconds",
                                    "Age of the oldest job not yet sent", registry=r)
        self.dead_jobs = Gauge("kourier_relay_dead_jobs", "Jobs in the dead-letter list",
                               registry=r)
        self.reload_success = Gauge("kourier_relay_config_last_reload_successful",
                                    "1 if the last config (re)load succeeded", registry=r)
        self.reload_time = Gauge("kourier_relay_config_last_reload_success_timestamp_seconds",
                                 "When the config was last loaded successfully", registry=r)
        self.live_messages = Counter(
            "kourier_relay_live_messages",
            "Live jobs by receiver and what their send did (post, edit, repost, skip) or"
            " postponed (another sender held the message)", ["receiver", "action"], registry=r)
        self.circuit_open = Gauge("kourier_relay_circuit_open", "1 while a receiver is paused",
                                  ["receiver"], registry=r)
        self.timers = Counter(
            "kourier_relay_timers",
            "Timer changes by kind (watch, digest, quiet) and change (armed, disarmed, fired)",
            ["kind", "change"], registry=r)
        self.held = Gauge("kourier_relay_held_notifications",
                          "Notifications waiting out their receiver's quiet hours", registry=r)
        self.open_windows = Gauge("kourier_relay_digest_windows_open",
                                  "Digest windows collecting events", registry=r)
        Info("kourier_relay_build", "Build information", registry=r).info(
            {"version": __version__})

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
