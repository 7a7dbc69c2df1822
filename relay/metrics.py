"""Prometheus metrics, one registry per running relay."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from relay import __version__


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("kourier_relay_events", "Webhook requests by event type and outcome",
                              ["type", "outcome"], registry=r)
        self.notifications = Counter("kourier_relay_notifications",
                                     "Attempt outcomes by receiver", ["receiver", "outcome"],
                                     registry=r)
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
        self.circuit_open = Gauge("kourier_relay_circuit_open", "1 while a receiver is paused",
                                  ["receiver"], registry=r)
        Info("kourier_relay_build", "Build information", registry=r).info(
            {"version": __version__})
