"""POST /webhook as Kourier meets it: every row of the ingest table, on a real server.

Each test asserts the status, the headers that matter, the `{"error", "details"}`
body and what the SQLite file holds afterwards (read with `sqlite3`, not through
the relay).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOKEN, wait_for

LIMIT = 65536  # server.max_body_bytes default
EVENT = {"event": "delivery.updated", "delivery_id": "abc123", "status": "in_transit",
         "timestamp": "2024-09-14T14:30:00Z"}
UNAUTHORIZED = {"error": "Unauthorized", "details": "missing or invalid bearer token"}
TOO_LARGE = {"error": "Payload too large", "details": f"body exceeds {LIMIT} bytes"}
STORE_DOWN = {"error": "Store unavailable", "details": "the event could not be stored; retry later"}

ROUTES = """
receivers:
  - name: ops
    urls: ["{ops}"]
  - name: refunds
    urls: ["{refunds}"]
  - name: vip
    urls: ["{vip}"]
routes:
  - name: refunded
    match: {event: delivery.refunded}
    receivers: [refunds]
  - name: gold
    match: {customer.tier: gold}
    receivers: [vip]
    title: "Gold: {{ customer.name }} / {{ delivery_id }}"
    body: "{{ status | human_status }} for {{ customer.name }} ({{ items.0.sku }})"
default_receiver: ops
"""


def event(**changes: Any) -> dict[str, Any]:
    out = {**EVENT, **changes}
    return {k: v for k, v in out.items() if v is not ...}


# ------------------------------------------------------------------ helpers


def counts(db: Path) -> tuple[int, int]:
    """(events, jobs) in the relay's database, read by a separate connection."""
    if not db.exists():
        return 0, 0
    with closing(sqlite3.connect(db)) as conn:
        return (conn.execute("SELECT count(*) FROM events").fetchone()[0],
                conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, args).fetchall()


def port_of(r: Any) -> int:
    return int(r.url.rsplit(":", 1)[1])


def head(auth: bytes | None = b"Bearer " + TOKEN.encode(), length: int | None = None,
         ctype: bytes = b"application/json") -> bytes:
    """A raw request head: header bytes go out exactly as given."""
    lines = [b"POST /webhook HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: " + ctype,
             b"Connection: close"]
    if auth is not None:
        lines.append(b"Authorization: " + auth)
    lines.append(b"Content-Length: %d" % length if length is not None
                 else b"Transfer-Encoding: chunked")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], Any]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return int(status_line.split()[1]), headers, json.loads(body)


async def raw_post(port: int, data: bytes) -> tuple[int, dict[str, str], Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "relay.db"


@pytest.fixture
async def relay(running: Any, sink: Any) -> Any:
    return await running(ROUTES, ops=sink.url("ops"), refunds=sink.url("refunds"),
                         vip=sink.url("vip"))


async def all_finished(db: Path, expected: int) -> bool:
    done = rows(db, "SELECT count(*) FROM jobs WHERE state IN ('sent', 'dead')")[0][0]
    return done == expected


# ------------------------------------------------------------------ accepted


async def test_new_event_is_committed_before_the_202_that_carries_its_id(relay, db, caplog):
    caplog.set_level(logging.DEBUG)
    status, body, headers = await relay.post(EVENT)

    assert status == 202
    assert headers["Content-Type"].startswith("application/json")
    assert body == {"id": body["id"], "status": "accepted", "notifications": 1}
    # Read at once, no waiting: the row must exist when the 202 is out.
    stored = rows(db, "SELECT id, type, delivery_id, payload FROM events")
    assert stored == [(body["id"], "delivery.updated", "abc123", json.dumps(EVENT))]
    assert rows(db, "SELECT event_id, receiver, route FROM jobs") == [
        (body["id"], "ops", "(default)")]
    assert TOKEN not in caplog.text


async def test_same_event_again_is_200_duplicate_and_adds_no_notification(relay, db):
    _, first, _ = await relay.post(EVENT)
    status, body, _ = await relay.post(EVENT)

    assert status == 200
    assert body == {"id": first["id"], "status": "duplicate"}
    assert counts(db) == (1, 1)


@pytest.mark.parametrize("header", ["Bearer second-token", f"bearer {TOKEN}"],
                         ids=["rotation-token", "scheme-case-insensitive"])
async def test_second_token_and_lowercase_scheme_are_accepted(relay, db, header):
    status, body, _ = await relay.post(EVENT, token=None, headers={"Authorization": header})

    assert (status, body["status"]) == (202, "accepted")
    assert counts(db) == (1, 1)


async def test_charset_parameter_on_json_content_type_is_accepted(relay, db):
    status, _, _ = await relay.post(EVENT, content_type="application/json; charset=utf-8")

    assert status == 202
    assert counts(db) == (1, 1)


async def test_body_of_exactly_max_body_bytes_is_accepted(relay, db):
    payload = event(pad="")
    payload["pad"] = "x" * (LIMIT - len(json.dumps(payload)))
    raw = json.dumps(payload).encode()
    assert len(raw) == LIMIT

    status, _, _ = await relay.post(raw=raw)

    assert status == 202
    assert counts(db) == (1, 1)


async def test_chunked_body_arriving_in_pieces_is_read_whole(relay, db):
    """A body split over many TCP reads (chunked, no Content-Length) is not cut short."""
    raw = json.dumps(event(pad="y" * 40_000)).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(relay))
    try:
        writer.write(head(length=None))
        for i in range(0, len(raw), 4096):
            writer.write(chunk(raw[i:i + 4096]))
            await writer.drain()
            await asyncio.sleep(0.002)  # pacing, not synchronisation: pieces arrive apart
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        status, _, body = await read_response(reader)
    finally:
        writer.close()

    assert (status, body["status"]) == (202, "accepted")
    assert json.loads(rows(db, "SELECT payload FROM events")[0][0])["pad"] == "y" * 40_000


# ------------------------------------------------------------------ 401


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Bearer wrong-token", f"Bearer {TOKEN}x",
    f"Basic {TOKEN}", "Basic dGVzdC10b2tlbg==", TOKEN, f"Token {TOKEN}",
], ids=["missing", "empty", "bearer-alone", "bearer-space", "wrong", "token-plus-char",
        "basic-raw", "basic-b64", "no-scheme", "other-scheme"])
async def test_missing_wrong_or_malformed_authorization_is_401_and_nothing_stored(
        relay, db, caplog, header):
    headers = {} if header is None else {"Authorization": header}

    status, body, resp_headers = await relay.post(EVENT, token=None, headers=headers)

    assert status == 401
    assert resp_headers["WWW-Authenticate"].startswith("Bearer ")
    assert body == UNAUTHORIZED
    assert counts(db) == (0, 0)
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("auth", [
    b"Bearer \xff\xfe\xfd", "Bearer tökén".encode(), b"Bearer " + TOKEN.encode() + b"\xc3",
    "Bearer tëst-token".encode("latin-1"), b"\x80\x81",
], ids=["invalid-utf8", "utf8", "token-plus-broken-utf8", "latin-1", "no-scheme-bytes"])
async def test_non_ascii_authorization_bytes_are_401_not_500(relay, db, auth):
    raw = json.dumps(EVENT).encode()

    status, headers, body = await raw_post(port_of(relay), head(auth, len(raw)) + raw)

    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer ")
    assert body == UNAUTHORIZED
    assert counts(db) == (0, 0)


async def test_non_ascii_configured_token_matches_its_utf8_bytes(running, db):
    r = await running('receivers: [{name: log, urls: ["console://"]}]\ndefault_receiver: log\n',
                      token="tökén-ünïcode")
    raw = json.dumps(EVENT).encode()

    status, _, body = await raw_post(port_of(r), head("Bearer tökén-ünïcode".encode(), len(raw))
                                     + raw)

    assert (status, body["status"]) == (202, "accepted")
    assert counts(db) == (1, 1)


# ------------------------------------------------------------------ 400 / 415


@pytest.mark.parametrize("raw", [b"not json", b'{"event": "delivery.updated",', b"",
                                 b'\xff\xfe{"event": 1}'],
                         ids=["text", "truncated", "empty", "invalid-utf8"])
async def test_body_that_is_not_json_is_400_and_nothing_stored(relay, db, raw):
    status, body, _ = await relay.post(raw=raw)

    assert status == 400
    assert set(body) == {"error", "details"}
    assert body["error"] == "Invalid JSON" and body["details"]
    assert counts(db) == (0, 0)


@pytest.mark.parametrize("payload", [[EVENT], "delivery.updated", 42, None],
                         ids=["array", "string", "number", "null"])
async def test_json_that_is_not_an_object_is_400_and_nothing_stored(relay, db, payload):
    status, body, _ = await relay.post(payload)

    assert status == 400
    assert body == {"error": "Invalid request data", "details": "Body must be a JSON object"}
    assert counts(db) == (0, 0)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x"])
async def test_wrong_content_type_is_415_and_nothing_stored(relay, db, ctype):
    status, body, _ = await relay.post(EVENT, content_type=ctype)

    assert status == 415
    assert body == {"error": "Unsupported media type",
                    "details": f"Content-Type must be application/json, got {ctype.split(';')[0]}"}
    assert counts(db) == (0, 0)


@pytest.mark.parametrize("field", ["delivery_id", "event", "timestamp"])
async def test_missing_required_field_is_400_in_kourier_error_shape(relay, db, field):
    status, body, _ = await relay.post(event(**{field: ...}))

    assert status == 400
    assert body == {"error": "Invalid request data", "details": f"Missing {field}"}
    assert counts(db) == (0, 0)


@pytest.mark.parametrize(("changes", "details"), [
    ({"delivery_id": 123}, "delivery_id must be a non-empty string"),
    ({"delivery_id": ""}, "delivery_id must be a non-empty string"),
    ({"event": None}, "event must be a non-empty string"),
    ({"event": ["delivery.updated"]}, "event must be a non-empty string"),
    ({"status": 5}, "status must be a non-empty string"),
    ({"timestamp": "yesterday"}, "timestamp must be ISO 8601, e.g. 2024-09-14T14:30:00Z"),
    ({"timestamp": 1726324200}, "timestamp must be a non-empty string"),
], ids=["id-int", "id-empty", "event-null", "event-list", "status-int", "ts-text", "ts-int"])
async def test_field_of_wrong_type_is_400_naming_the_field(relay, db, changes, details):
    status, body, _ = await relay.post(event(**changes))

    assert status == 400
    assert body == {"error": "Invalid request data", "details": details}
    assert counts(db) == (0, 0)


# ------------------------------------------------------------------ 413


async def test_body_over_limit_with_content_length_is_413_and_nothing_stored(relay, db):
    raw = json.dumps(event(pad="z" * LIMIT)).encode()

    status, body, _ = await relay.post(raw=raw)

    assert status == 413
    assert body == TOO_LARGE
    assert counts(db) == (0, 0)


async def test_huge_content_length_is_413_before_any_body_byte_is_sent(relay, db):
    # Only the head goes out: a server that waited for the body would never answer.
    status, _, body = await raw_post(port_of(relay), head(length=10 * 1024 * 1024))

    assert status == 413
    assert body == TOO_LARGE
    assert counts(db) == (0, 0)


async def test_chunked_body_over_limit_is_413_while_the_body_is_still_unfinished(relay, db):
    """10 MiB chunked with no Content-Length: the 413 comes although the body never ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(relay))
    piece = chunk(b"[" + b" " * 65534 + b"]")

    async def stream() -> None:
        with suppress(ConnectionError):
            writer.write(head(length=None))
            for _ in range(160):  # 160 x 64 KiB = 10 MiB, and never the final 0-chunk
                writer.write(piece)
                await writer.drain()
            await asyncio.Event().wait()  # hold the body open: it must not be needed

    sender = asyncio.create_task(stream())
    try:
        status, _, body = await read_response(reader)
    finally:
        sender.cancel()
        writer.close()

    assert status == 413
    assert body == TOO_LARGE
    assert counts(db) == (0, 0)


# ------------------------------------------------------------------ unknown types, extras


async def test_unknown_event_type_is_202_stored_and_routed_only_by_a_route_naming_it(
        relay, db, sink, caplog):
    caplog.set_level(logging.INFO)
    # Both would match the gold route and the default receiver if they were known types.
    refunded = event(event="delivery.refunded", customer={"tier": "gold", "name": "Ada"})
    teleported = event(event="delivery.teleported", customer={"tier": "gold", "name": "Ada"})

    s1, b1, _ = await relay.post(refunded)
    s2, b2, _ = await relay.post(teleported)

    assert (s1, b1["status"], b1["notifications"]) == (202, "accepted", 1)
    assert (s2, b2["status"], b2["notifications"]) == (202, "accepted", 0)
    assert rows(db, "SELECT id, type FROM events ORDER BY id") == [
        (b1["id"], "delivery.refunded"), (b2["id"], "delivery.teleported")]
    assert rows(db, "SELECT event_id, receiver, route FROM jobs") == [
        (b1["id"], "refunds", "refunded")]
    assert "accepted unhandled event type 'delivery.teleported'" in caplog.text
    await wait_for(lambda: all_finished(db, 1), message="the refund notification")
    assert [m["path"] for m in sink.received] == ["/refunds"]


async def test_extra_payload_fields_are_kept_and_drive_routes_and_templates(relay, db, sink):
    gold = event(status="delivered", customer={"tier": "gold", "name": "Ada"},
                 items=[{"sku": "BOX-1"}, {"sku": "BOX-2"}])
    silver = event(delivery_id="def456", customer={"tier": "silver", "name": "Bob"})

    s1, b1, _ = await relay.post(gold)
    s2, b2, _ = await relay.post(silver)

    assert (s1, s2) == (202, 202)
    assert json.loads(rows(db, "SELECT payload FROM events WHERE id=?", b1["id"])[0][0]) == gold
    assert rows(db, "SELECT event_id, receiver, route FROM jobs ORDER BY id") == [
        (b1["id"], "vip", "gold"), (b2["id"], "ops", "(default)")]
    msgs = await wait_for(lambda: sink.messages("vip"), message="the gold notification")
    assert (msgs[0]["title"], msgs[0]["message"]) == ("Gold: Ada / abc123",
                                                      "Delivered for Ada (BOX-1)")


# ------------------------------------------------------------------ 503


def _mount_tmpfs(where: Path) -> bool:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


def _fill(where: Path) -> Path:
    """Write until the filesystem says ENOSPC (unbuffered, so the error is ours to see)."""
    filler = where / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            with suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs that the test can fill: a real 'disk full' under SQLite."""
    where = tmp_path / "small"
    if not _mount_tmpfs(where):
        pytest.skip("needs permission to mount a tmpfs (root with CAP_SYS_ADMIN)")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


async def _store_refuses(r: Any, db: Path, new: dict[str, Any], caplog: Any, cause: str,
                         ) -> None:
    """The event is answered 503 (Retry-After) and leaves nothing in the database."""
    before = counts(db)
    caplog.set_level(logging.ERROR, logger="relay")
    status, body, headers = await r.post(new)
    assert cause in caplog.text  # SQLite really failed, for the reason the test names
    assert status == 503
    assert headers["Retry-After"] == "5"
    assert body == STORE_DOWN
    assert counts(db) == before


async def _accepted_and_sent(r: Any, db: Path) -> None:
    status, _, _ = await r.post(EVENT)
    assert status == 202
    await wait_for(lambda: all_finished(db, 1), message="the first notification to be sent")


async def test_disk_full_is_503_and_kouriers_retry_succeeds_after_space_is_freed(
        running, sink, small_fs, caplog):
    db = small_fs / "relay.db"
    r = await running(ROUTES, db=db, ops=sink.url("ops"), refunds=sink.url("r"),
                      vip=sink.url("v"))
    await _accepted_and_sent(r, db)
    filler = _fill(small_fs)
    second = event(delivery_id="def456")

    await _store_refuses(r, db, second, caplog, "database or disk is full")

    filler.unlink()
    status, _, _ = await r.post(second)
    assert status == 202
    assert counts(db) == (2, 2)


async def test_io_error_on_the_wal_is_503_and_nothing_stored(running, sink, db, caplog):
    if not shutil.which("chattr"):
        pytest.skip("needs chattr")
    r = await running(ROUTES, ops=sink.url("ops"), refunds=sink.url("r"), vip=sink.url("v"))
    await _accepted_and_sent(r, db)
    wal = Path(f"{db}-wal")
    if subprocess.run(["chattr", "+i", str(wal)], capture_output=True).returncode != 0:
        pytest.skip("filesystem does not support the immutable attribute")
    try:
        await _store_refuses(r, db, event(delivery_id="def456"), caplog, "disk I/O error")
    finally:
        subprocess.run(["chattr", "-i", str(wal)], check=True)
    status, _, _ = await r.post(event(delivery_id="def456"))
    assert status == 202
    assert counts(db) == (2, 2)


async def test_database_locked_by_another_writer_is_503_and_nothing_stored(
        running, sink, db, caplog):
    r = await running(ROUTES, ops=sink.url("ops"), refunds=sink.url("r"), vip=sink.url("v"),
                      store="busy_timeout: 0.3s")
    await _accepted_and_sent(r, db)
    with closing(sqlite3.connect(db, isolation_level=None)) as blocker:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock past the busy timeout
        await _store_refuses(r, db, event(delivery_id="def456"), caplog, "database is locked")
        blocker.execute("ROLLBACK")
    status, _, _ = await r.post(event(delivery_id="def456"))
    assert status == 202
    assert counts(db) == (2, 2)


# ------------------------------------------------------------------ health


async def test_healthz_answers_ok_without_a_token(relay):
    async with relay.session.get(relay.url + "/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}

