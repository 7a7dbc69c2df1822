"""The status page in a terminal: `delivery ID` and `receivers`; and `retry-now RECEIVER`.

For an operator with a shell on the relay's machine and no browser or token
(`docker exec relay kourier-relay delivery D-1042`): `delivery` prints what the
delivery page shows (its events, which routes matched, every notification they caused
with each attempt, its watches, live messages, digests and notifications held by quiet
hours), `receivers` what the overview's receivers table shows (each receiver URL's
state, waiting jobs, rate limit, last success and last error). Both read the store and
the config, and use the page's own pure views (`relay.ui.views`). Payload and config
text is printed without control characters (an event cannot move the cursor or
recolour the terminal), errors with URLs masked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from relay.cli_support import config_option, fail, guarded, load_config, run_store

if TYPE_CHECKING:
    from relay.store import ReceiverState, Store
    from relay.store.relays import RelayState
    from relay.ui.views import DeliveryView, JobView, ReceiverRow

TITLE_MAX = 100  # a title longer than this is cut with "…" (the status page shows it whole)


@click.command("delivery")
@config_option
@click.argument("delivery_id")
@guarded
def delivery(config_path: str, delivery_id: str) -> None:
    """What happened to one delivery.

    The store's newest events of DELIVERY_ID, the notifications they caused and every
    attempt, its watches, live messages, digests and held notifications, as the status
    page's delivery page shows them; times in the config's timezone.
    """
    from relay.events import unstorable
    from relay.routing import Router
    from relay.ui.views import delivery_view

    config = load_config(config_path)
    # An id no store can hold (a non-UTF-8 byte from the shell) names no delivery.
    timeline = None if unstorable(delivery_id) else \
        run_store(config_path, lambda s: s.timeline(delivery_id))
    if timeline is None or not timeline.events:
        fail(f"no delivery {delivery_id!r} in the store (or its events are older than"
             " store.retention)")
    for line in lines(delivery_view(timeline, Router.from_config(config)), config.timezone):
        click.echo(line)


@click.command("receivers")
@config_option
@guarded
def receivers(config_path: str) -> None:
    """Each receiver URL's state.

    One line per URL of every configured receiver (and any the store still knows): its
    state (idle, sending, retrying, probing, circuit open, quiet hours, not in config),
    jobs waiting, rate limit, last success and last error, as the status page's overview
    shows them; with several relays serving from the store, one line per relay and where
    its receiver URLs differ from this config's.
    """
    import time

    from relay.notify import redact
    from relay.ui.views import ago, other_relays_places, receiver_rows, relay_rows

    config = load_config(config_path)

    async def read(store: Store) -> tuple[list[ReceiverState], list[RelayState]]:
        return await store.receivers(), await store.relays()

    states, announced = run_store(config_path, read)
    labels = {name: [redact(u) for u in rc.urls] for name, rc in config.receivers.items()}
    now = time.time()
    for row in receiver_rows(config, states, now, labels,
                             other_relays_places(announced, "", now)):
        click.echo(receiver_line(row, now))
    relays = relay_rows(config, announced, "", now)
    if len(relays) > 1:  # replicas: which relay sends for what, against this config
        click.echo(f"{len(relays)} relays serve from this store:")
        for r in relays:
            differs = "; ".join([*(["lacks " + ", ".join(r.lacks)] if r.lacks else []),
                                 *(["also sends for " + ", ".join(r.extra)] if r.extra else [])])
            who = r.host + (f" pid {r.pid}" if r.pid else "")  # all from the store: plain
            click.echo("  " + _plain(f"{who}: seen {ago(r.seen_at, now)}, {r.urls} receiver"
                                     f" URL(s); {differs or 'same receiver URLs as'}"
                                     f"{'' if differs else ' ' + config.source.file}"))


@click.command("retry-now")
@config_option
@click.argument("receiver", required=False)
@click.option("--url", "url_index", type=click.IntRange(0), metavar="N",
              help="Only the receiver's URL at this place in its urls (from 0).")
@click.option("--all", "everyone", is_flag=True,
              help="Every receiver of the config (after an outage of the network, say).")
@guarded
def retry_now(config_path: str, receiver: str | None, url_index: int | None,
              everyone: bool) -> None:
    """Send a receiver's waiting retries now.

    After fixing what made RECEIVER's URLs fail (a revoked webhook, a full mailbox, an
    outage that is over): each URL's circuit closes and its jobs waiting out a retry's
    backoff are due now; a running relay sends them within a second. Jobs never
    attempted keep their wait (a route's hold, quiet hours). A reload that puts another
    URL in a place does the same for that place by itself.
    """
    import os
    import time

    from relay.notify import redact

    if everyone == (receiver is not None) or (everyone and url_index is not None):
        fail("give a receiver's name (and --url N for one of its URLs), or --all")
    config = load_config(config_path)
    names = sorted(config.receivers) if receiver is None else [receiver]
    if receiver is not None and receiver not in config.receivers:
        shown = os.fsencode(receiver).decode("utf-8", "backslashreplace")  # non-UTF-8 bytes
        fail(f'no receiver "{_plain(shown)}" in {config.source.file}'
             f" (its receivers: {', '.join(sorted(config.receivers))})")
    if url_index is not None and receiver is not None:
        count = len(config.receivers[receiver].urls)
        if url_index >= count:
            fail(f'receiver "{receiver}" has {count} URL(s), urls[0] to urls[{count - 1}]:'
                 f" there is no --url {url_index}")
    places = [(name, i) for name in names for i in range(len(config.receivers[name].urls))
              if url_index is None or i == url_index]
    if not places:  # --all, and the config has no receivers
        click.echo(f"{config.source.file} has no receivers: nothing to retry")
        return

    async def retry(store: Store) -> list[int]:
        return [await store.retry_now(name, i, now=time.time()) for name, i in places]

    for (name, i), count in zip(places, run_store(config_path, retry), strict=True):
        click.echo(f"{name}[{i}] {redact(config.receivers[name].urls[i])}: circuit closed;"
                   f" {count} waiting retr{'y goes' if count == 1 else 'ies go'} now")


def receiver_line(row: ReceiverRow, now: float) -> str:
    """`ops-chat[0] json://***: circuit open (paused …); 102 waiting; …` (pure)."""
    from relay.logs import scrub
    from relay.ui.views import ago

    where = f"{_plain(row.name)}[{row.url_index}]" + (f" {row.url}" if row.url else "")
    error = f"; last error {ago(row.last_error_at, now)}: {scrub(_plain(row.last_error))}" \
        if row.last_error else ""
    return (f"{where}: {row.state} ({_plain(row.detail)}); {row.backlog} waiting; rate limit"
            f" {row.rate_limit}; last success {ago(row.last_success, now)}{error}")


def lines(view: DeliveryView, zone: str) -> list[str]:
    """The delivery page as lines of text (pure)."""
    from relay.ui.views import when

    def at(ts: float | None) -> str:
        return when(ts, zone)

    total = len(view.events) + view.earlier
    counts = ", ".join(f"{n} {state}" for state, n in sorted(view.counts.items()))
    out = [f"delivery {_plain(view.delivery_id)}: {total} event{'s' if total != 1 else ''}"
           + (f"; notifications: {counts}" if counts else "; no notifications")]
    if view.earlier:
        out.append(f"(the newest {len(view.events)} shown; {view.earlier} earlier not shown)")
    for ev in view.events:
        status = f"  {_plain(ev.status)}" if ev.status else ""
        out += ["", f"{at(ev.event.received_at)}  {_plain(ev.event.type)}{status}"
                    f"  (event {ev.event.id})",
                f"  routes: {_plain(', '.join(ev.routes_recorded)) or 'none matched'}"]
        out += [line for jv in ev.jobs for line in _job(jv, at)] or ["  no notification"]
    out += _section("watches", [
        f"  {_plain(w.name)}: " + ({"armed": f"armed, fires {at(w.due_at)} unless a stop event comes",
                            "claimed": f"firing (due {at(w.due_at)})",
                            "fired": f"fired {at(w.ended_at)}"}.get(
                               w.state, f"disarmed {at(w.ended_at)} by a stop event"))
        + ("" if w.armed else " (never armed: its stop came first)")
        + (" (its event was already older than the watch's time: a minute after receipt)"
           if w.late else "") for w in view.watches])
    out += _section("live messages", [
        f"  {_plain(m.route) + ' to ' if m.route else ''}{_plain(m.receiver)}: "
        + (f"message {_plain(m.message)}, showing {at(m.shown)}" if m.message
           else "not posted yet") for m in view.live])
    out += _section("digests", [
        f"  {_plain(d.route)} {_plain(d.group)} to {_plain(d.receiver)}: joined {at(d.joined_at)}; "
        + (f"sent {at(d.sent_at)}" if d.sent_at else f"waiting for {at(d.closes_at)}")
        for d in view.digests])
    out += _section("held by quiet hours", [
        f"  {_title(h.title)} to {_plain(h.receiver)}: "
        + (f"summarised {at(h.summarised_at)}" if h.summarised_at
           else f"held until {at(h.until)}, then sent in one summary") for h in view.held])
    return out


def _job(jv: JobView, at: Callable[[float | None], str]) -> list[str]:
    from relay.logs import scrub

    j = jv.job
    where = f"{_plain(j.receiver)}[{j.url_index}]"
    ref = f", live message {_plain(jv.message_ref)}" if jv.message_ref else ""
    out = [f"  -> {where} {j.state}: {_title(j.message.title)} (route {_plain(j.route)}, job {j.id}{ref})"]
    for a in jv.attempts:
        took = f" ({a.duration * 1000:.0f} ms)" if a.duration else ""
        error = f": {scrub(_plain(a.error))}" if a.error else ""
        out.append(f"       {at(a.at)} {a.outcome}{took}{error}")
    if not jv.attempts:
        out.append("       " + ("not tried yet" if j.state in ("pending", "claimed", "held")
                                else f"not sent: {scrub(_plain(j.last_error))}" if j.last_error
                                else "no attempts"))
    return out


def _section(name: str, items: list[str]) -> list[str]:
    return ["", f"{name}:", *items] if items else []


def _title(text: str) -> str:
    plain = _plain(text)
    return '"' + (plain if len(plain) <= TITLE_MAX else plain[:TITLE_MAX - 1] + "…") + '"'


def _plain(text: str) -> str:
    from relay.escaping import strip_controls

    return strip_controls(text, single_line=True)
