"""Which way one job is sent: a live message (post, edit, thread reply) or Apprise.

A job of a live route (`Job.live`) goes through `LiveSender` when its receiver
URL can edit (`relay.live.live_client`); to an email URL it goes through
Apprise with its delivery's thread headers; every other job goes through
Apprise as rendered. Each way gives the same `Outcome`, so what an attempt
means (retries, `Retry-After`, the circuit, dead letters, replay) and who
hears of it (metrics, logs, the failing-receiver notice) are the worker's, as
for any job. The URL is looked up in the running config at send time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import replace

from aiohttp import ClientSession

from relay.live import LiveClient, live_client
from relay.live import email as live_email
from relay.live.sender import LiveJob, LiveSender
from relay.notify import Outcome
from relay.runtime import Runtime
from relay.store import Job, LiveMessages, rules

EMAIL = "email"  # the way of an email URL: Apprise, in the delivery's thread


class Sending:
    """The worker's `JobSender`: live jobs to their platform's API, the rest through Apprise.

    `api_base` points platforms' APIs elsewhere (`{"slack": "http://127.0.0.1:9000/api"}`):
    it exists for tests that answer as the platforms do on a local port.
    """

    def __init__(self, store: LiveMessages, owner: str, clock: Callable[[], float],
                 api_base: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.owner = owner
        self.clock = clock
        self.api_base = api_base
        self._session: ClientSession | None = None
        self._ways: dict[tuple[str, float], LiveClient | str | None] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, job: Job, rt: Runtime) -> Outcome:
        url = rt.notifier.url(job.receiver, job.url_index)
        way = self._way(url, rt) if url is not None and job.live else None
        if way == EMAIL:
            thread = live_email.thread_id(job.delivery_id, job.route, job.receiver, job.url_index)
            return await _apprise(job, rt, live_email.thread_headers(thread))
        if way is None or isinstance(way, str):
            return await _apprise(job, rt)
        return await self._live(way, job, rt)

    def _way(self, url: str, rt: Runtime) -> LiveClient | str | None:
        """The live client of a URL (kept: a Matrix client keeps its login), EMAIL, or None."""
        timeout = rt.config.sending.attempt_timeout
        key = (url, timeout)
        if key not in self._ways:
            if self._session is None:
                self._session = ClientSession()
            self._forget_others(rt)
            client = live_client(url, self._session, timeout=timeout, api_base=self.api_base)
            self._ways[key] = client or (EMAIL if live_email.is_email(url) else None)
        return self._ways[key]

    def _forget_others(self, rt: Runtime) -> None:
        """Clients of URLs the running config no longer has (a reload changed them)."""
        urls = {u for rc in rt.config.receivers.values() for u in rc.urls}
        for key in [k for k in self._ways if k[0] not in urls]:
            del self._ways[key]

    async def _live(self, client: LiveClient, job: Job, rt: Runtime) -> Outcome:
        sending = rt.config.sending
        sender = LiveSender(self.store, f"{self.owner}/{job.id}", self.clock, sending.lease,
                            sending.attempt_timeout)
        sent = await sender.send(client, live_job(job))
        return replace(sent.outcome, live=sent.action)


async def _apprise(job: Job, rt: Runtime, headers: Mapping[str, str] | None = None) -> Outcome:
    m = job.message
    return await rt.send_with().send(job.receiver, job.url_index, m.title, m.body, m.type,
                                     m.format, headers)


def live_job(job: Job) -> LiveJob:
    """What the live sender needs of a job: its message's key, the state's time, a stable id."""
    key = rules.live_key(job.delivery_id, job.route, job.receiver, job.url_index)
    ts = job.event_at if job.event_at is not None else job.created_at
    # Stable across a job's retries and replays, and unlike any other job's, even one of
    # another database (Matrix answers a reused transaction id with the event it made).
    idem = hashlib.sha256(f"{job.id}\0{key}\0{ts!r}".encode()).hexdigest()[:24]
    return LiveJob(key, job.delivery_id, ts, idem, job.message)
