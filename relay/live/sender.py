"""One live job's send: hold the message, then post, edit (+ thread reply) or skip, record the ref.

The rules (post first, never edit back to an older state, which state the
message shows) are `relay.store.rules`; the store keeps the ref and holds the
message for one sender at a time. A message that is gone (deleted, no longer
editable) is posted afresh and its new ref kept: never a dead letter for that.

The crash window: a post that succeeded but whose ref was not recorded (the
process died in between, or the answer was lost) is posted again by the
retry, so the channel shows a second root message. On Matrix the retry reuses
the first attempt's transaction id, so the server answers with the event it
already made (with an access-token URL; a password login is a new device).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from relay.errors import StoreError
from relay.live import LiveClient, LiveResult, MessageRef
from relay.message import Message
from relay.notify import MIN_WAIT_AFTER_TIMEOUT, SENT, Outcome
from relay.store import LiveMessages, LiveSlot, rules

log = logging.getLogger(__name__)
HELD_WAIT = 1.0  # another sender is updating the same message: look again shortly


@dataclass(frozen=True)
class LiveJob:
    key: str  # rules.live_key(delivery_id, route, receiver, url_index)
    delivery_id: str
    ts: float  # the event's time: the state this job shows
    idem: str  # stable across retries of one job (its id): an idempotent post where possible
    message: Message


@dataclass(frozen=True)
class LiveSent:
    """What one live send did: `post`, `edit`, `repost` (the old one was gone), `skip`, `postponed`."""

    outcome: Outcome
    action: str
    ref: MessageRef | None = None
    shows: bool = False  # the message now shows this job's state (even if its reply failed)


@dataclass(frozen=True)
class LiveSender:
    """Sends as `owner` (one send's own name: the hold is per send); `timeout` bounds the
    platform calls of one send, `lease` the hold on the message."""

    store: LiveMessages
    owner: str
    clock: Callable[[], float]
    lease: float = 60.0
    timeout: float = 15.0

    async def send(self, client: LiveClient, job: LiveJob) -> LiveSent:
        try:
            slot = await self.store.live_take(job.key, job.delivery_id, owner=self.owner,
                                              now=self.clock(), lease=self.lease)
        except StoreError as e:  # nothing was tried: not the receiver's failure
            return LiveSent(Outcome("retry", f"store unavailable: {e}", HELD_WAIT,
                                    postponed=True),
                            "postponed")
        if slot is None:
            return await self._held(job)
        try:
            async with asyncio.timeout(self.timeout):
                sent = await self._act(client, job, slot)
        except TimeoutError:  # it may have arrived: wait as after any timeout
            sent = LiveSent(Outcome("retry", f"timed out after {self.timeout:g}s",
                                    MIN_WAIT_AFTER_TIMEOUT), "timeout")
        except BaseException:
            await self._durably(lambda: self.store.live_release(job.key, owner=self.owner), 0)
            raise
        await self._record(job, slot, sent)
        return sent

    async def _held(self, job: LiveJob) -> LiveSent:
        """Another sender holds the message: wait a moment, or its lease if it seems gone."""
        try:
            current = await self.store.live_ref(job.key)
        except StoreError:
            current = None
        now = self.clock()
        wait = rules.held_wait(current.held_until if current else None, now, self.lease,
                               2 * self.timeout, HELD_WAIT)
        return LiveSent(Outcome("retry", "another sender is updating this live message", wait,
                                postponed=True), "postponed")

    async def _act(self, client: LiveClient, job: LiveJob, slot: LiveSlot) -> LiveSent:
        action = rules.live_action(slot.ref, slot.shown, job.ts)
        if action == "skip":  # the message already shows a newer state
            return LiveSent(SENT, "skip", MessageRef.from_json(slot.ref or ""))
        if action == "edit":
            ref = MessageRef.from_json(slot.ref or "")
            # the target is in the key: a reused key answers with what it made the first time
            edited = await client.edit(ref, job.message, key=f"{job.idem}.edit.{ref.message}")
            if not edited.gone:
                return await self._thread(client, job, ref, edited)
            posted = await client.post(job.message, key=f"{job.idem}.repost.{ref.message}")
            return LiveSent(posted.outcome, "repost", posted.ref, posted.sent)
        posted = await client.post(job.message, key=job.idem)
        return LiveSent(posted.outcome, "post", posted.ref, posted.sent)

    @staticmethod
    async def _thread(client: LiveClient, job: LiveJob, ref: MessageRef,
                      edited: LiveResult) -> LiveSent:
        """After an edit, the change as a reply in the message's thread (its history)."""
        if not edited.sent or not client.threads:
            return LiveSent(edited.outcome, "edit", ref, edited.sent)
        replied = await client.reply(ref, job.message, key=f"{job.idem}.reply.{ref.message}")
        return LiveSent(replied.outcome, "edit", ref, True)

    async def _record(self, job: LiveJob, slot: LiveSlot, sent: LiveSent) -> None:
        if not sent.shows or sent.ref is None:
            await self._durably(lambda: self.store.live_release(job.key, owner=self.owner), 0)
            return
        # a fresh post starts the message's history; an edit never moves it back
        shown = job.ts if sent.action != "edit" else rules.shown_after(slot.shown, job.ts)
        ref = sent.ref.to_json()
        # A ref that is not kept means a second root message at the next edit: keep trying
        # while the hold lasts (the store may be back in a moment).
        async def done() -> None:
            if not await self.store.live_done(job.key, owner=self.owner, ref=ref, shown=shown,
                                              now=self.clock()):
                log.warning("live message %s: its hold lapsed before the ref was recorded; the"
                            " next update may post a second message", job.key)
        await self._durably(done, self.lease)

    async def _durably(self, write: Callable[[], Awaitable[object]], patience: float) -> None:
        """A store write, retried while the store is down for up to `patience` seconds."""
        delay, waited = 0.2, 0.0
        while True:
            try:
                await write()
                return
            except StoreError as e:
                if waited + delay > patience:
                    log.warning("live message %s not recorded (store unavailable: %s); its"
                                " hold lapses with its lease", self.owner, e)
                    return
                await asyncio.sleep(delay)
                waited, delay = waited + delay, min(delay * 2, 5.0)
