"""The Matrix live client against a real Synapse: assertions are on the room's real events."""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from aiohttp import ClientSession

from relay.live import MessageRef, live_client
from relay.live.matrix import MatrixClient
from relay.message import Message
from tests.synapse import Homeserver

CREATED = Message("Delivery D1: created", "Parcel registered", "info", "text")
TRANSIT = Message("Delivery D1: in transit", "Left the depot", "info", "text")
_names = itertools.count(1)


@dataclass
class Room:
    hs: Homeserver
    room_id: str
    bot: str
    password: str
    watcher: str  # the token of a user who reads the room

    def url(self, room: str | None = None) -> str:
        port = self.hs.base.rsplit(":", 1)[1]
        return f"matrix://{self.bot}:{self.password}@127.0.0.1:{port}/{room or self.room_id}"

    def messages(self) -> list[dict]:
        return self.hs.messages(self.room_id, self.watcher)

    def top_level(self) -> list[dict]:
        return [e for e in self.messages() if "m.relates_to" not in e["content"]]


@pytest.fixture
def room(homeserver: Homeserver) -> Room:
    n = next(_names)
    bot, watcher, password = f"bot{n}-{secrets.token_hex(3)}", f"ops{n}-{secrets.token_hex(3)}", \
        secrets.token_urlsafe(12)
    homeserver.register(bot, password)
    token = homeserver.register(watcher, password)
    return Room(homeserver, homeserver.create_room(token), bot, password, token)


@pytest.fixture
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession() as s:
        yield s


def client(room: Room, session: ClientSession, url: str | None = None) -> MatrixClient:
    c = live_client(url or room.url(), session, timeout=20)
    assert isinstance(c, MatrixClient)
    return c


async def test_post_edit_and_thread_reply_are_real_room_events(room: Room, session) -> None:
    c = client(room, session)
    posted = await c.post(CREATED, key="job-1")
    assert posted.sent and posted.ref.channel == room.room_id
    root = posted.ref.message
    edited = await c.edit(posted.ref, TRANSIT, key="job-2")
    assert edited.sent and edited.ref == posted.ref  # later edits replace the original event
    reply = Message("in transit", "Left the depot", "info", "text")
    assert (await c.reply(posted.ref, reply, key="job-3")).sent

    (top,) = room.top_level()
    assert top["event_id"] == root and top["content"]["body"] == CREATED.plain()
    (edit,) = room.hs.relations(room.room_id, root, "m.replace", room.watcher)
    assert edit["content"]["m.new_content"]["body"] == TRANSIT.plain()
    assert edit["content"]["m.relates_to"] == {"rel_type": "m.replace", "event_id": root}
    (reply,) = room.hs.relations(room.room_id, root, "m.thread", room.watcher)
    assert reply["content"]["body"] == "in transit\nLeft the depot"
    assert reply["content"]["m.relates_to"]["m.in_reply_to"] == {"event_id": root}


async def test_a_retried_post_with_the_same_key_makes_one_event(room: Room, session) -> None:
    c = client(room, session)
    first = await c.post(CREATED, key="job-7")
    again = await c.post(CREATED, key="job-7")  # as after a lost answer: same transaction id
    assert first.ref == again.ref
    assert len(room.top_level()) == 1


async def test_concurrent_posts_on_one_client_all_arrive(room: Room, session) -> None:
    # Apprise's cached Matrix object reuses a transaction id under concurrency (HAZARDS.md).
    c = client(room, session)
    results = await asyncio.gather(*(c.post(Message(f"D{i}", "created", "info", "text"),
                                            key=f"job-{i}") for i in range(12)))
    assert all(r.sent for r in results)
    assert sorted(e["content"]["body"] for e in room.top_level()) == \
        sorted(f"D{i}\ncreated" for i in range(12))


async def test_a_redacted_message_is_gone(room: Room, session) -> None:
    c = client(room, session)
    posted = await c.post(CREATED, key="job-1")
    room.hs.redact(room.room_id, posted.ref.message, _bot_token(room))  # a user deletes it
    result = await c.edit(posted.ref, TRANSIT, key="job-2")
    assert result.gone and result.outcome.kind == "failed"
    assert room.hs.relations(room.room_id, posted.ref.message, "m.replace", room.watcher) == []


async def test_an_edit_of_a_message_in_a_room_out_of_reach_is_gone(room: Room, session) -> None:
    elsewhere = room.hs.create_room(room.watcher)  # the bot is not in it
    posted = room.hs.request("PUT", f"/_matrix/client/v3/rooms/{quote(elsewhere)}/send/"
                                    "m.room.message/t1", {"msgtype": "m.text", "body": "x"},
                             room.watcher)
    ref = MessageRef("matrix", elsewhere, posted["event_id"])
    result = await client(room, session).edit(ref, TRANSIT, key="job-9")
    assert result.gone and result.outcome.status == 404  # what the spec answers for it


def _bot_token(room: Room) -> str:
    return str(room.hs.request("POST", "/_matrix/client/v3/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": room.bot},
        "password": room.password})["access_token"])


async def test_an_unknown_alias_fails_and_creates_no_room(room: Room, session) -> None:
    c = client(room, session, room.url(quote("#no-such-room:localhost", safe=":")))
    result = await c.post(CREATED)
    assert result.outcome.kind == "failed" and "M_NOT_FOUND" in result.outcome.error
    joined = room.hs.request("GET", "/_matrix/client/v3/joined_rooms", token=_bot_token(room))
    assert joined["joined_rooms"] == []


async def test_wrong_password_fails_without_showing_it(room: Room, session) -> None:
    url = room.url().replace(room.password, "WRONGsecretPW")
    result = await client(room, session, url).post(CREATED)
    assert result.outcome.kind == "failed" and result.outcome.status == 403
    assert "WRONGsecretPW" not in result.outcome.error


async def test_an_access_token_url_posts_and_edits(room: Room, session) -> None:
    token = _bot_token(room)
    port = room.hs.base.rsplit(":", 1)[1]
    c = client(room, session, f"matrix://{token}@127.0.0.1:{port}/{room.room_id}")
    posted = await c.post(CREATED, key="t-1")
    assert posted.sent and (await c.edit(posted.ref, TRANSIT, key="t-2")).sent
    assert len(room.hs.relations(room.room_id, posted.ref.message, "m.replace", room.watcher)) == 1


async def test_at_room_in_a_message_mentions_nobody(room: Room, session) -> None:
    c = client(room, session)
    await c.post(Message("@room look", "x", "info", "text"), key="m-1")
    (event,) = room.top_level()
    assert event["content"]["m.mentions"] == {}
