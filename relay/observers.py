"""The worker's standard observers: metrics and log lines, one per recorded decision
and one per claimed timer's outcome."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from relay.decision import Report
from relay.firing import TimerReport
from relay.logs import fields
from relay.metrics import Metrics

log = logging.getLogger("relay.worker")  # operators filter on the worker's logger name


class MetricsObserver:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def observe(self, report: Report) -> None:
        receiver, decision = report.job.receiver, report.decision
        if decision.kind == "postponed" or (decision.kind == "sent" and decision.live):
            action = "postponed" if decision.kind == "postponed" else decision.live
            self.metrics.live_messages.labels(receiver, action).inc()
        if not report.attempted:  # postponed, or buried without a send (its receiver is gone)
            return
        if report.decision.kind == "dead":  # the attempt's outcome, and the burial's reason
            self.metrics.count_burial(receiver, report.attempt.outcome)
        else:
            self.metrics.notifications.labels(receiver, report.attempt.outcome).inc()
        self.metrics.attempt_seconds.labels(receiver).observe(report.attempt.duration)

    def observe_timer(self, report: TimerReport) -> None:
        if report.outcome == "fired":
            self.metrics.timers.labels(report.timer.kind, "fired").inc()


class LogObserver:
    def observe(self, report: Report) -> None:
        job, decision = report.job, report.decision
        info = fields(job_id=job.id, event_id=job.event_id, delivery_id=job.delivery_id,
                      route=job.route, receiver=job.receiver, url=job.url_index,
                      attempt=job.attempts + 1)
        if decision.kind == "postponed":
            log.debug("postponed: %s", decision.why, extra=info)
        elif decision.kind == "sent":
            log.info("sent", extra=fields(**info["fields"], live=decision.live or None))
        elif decision.kind == "retry":
            log.warning("retry in %.0fs: %s", decision.delay, decision.error, extra=info)
        else:
            log.error("dead: %s", decision.reason, extra=info)
        if report.circuit_opened:
            log.error("receiver %s URL #%d keeps failing; its circuit is open until a probe"
                      " succeeds", job.receiver, job.url_index,
                      extra=fields(receiver=job.receiver, url=job.url_index))

    def observe_timer(self, report: TimerReport) -> None:
        timer = report.timer
        info = fields(kind=timer.kind, key=timer.key, delivery_id=timer.delivery_id,
                      jobs=report.jobs if report.outcome == "fired" else None)
        if report.outcome == "fired":
            log.info("timer fired", extra=info)
        elif report.outcome == "deferred":
            log.info("summary found due in quiet hours again: it waits until they end",
                     extra=fields(kind=timer.kind, key=timer.key, until=_iso(report.until)))
        elif report.outcome == "stale":
            log.info("timer changed before it fired (disarmed, re-armed or taken over);"
                     " nothing sent", extra=info)
        else:
            log.warning("no handler for %s timers here; left for a relay that has one", timer.kind,
                        extra=info)


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()
