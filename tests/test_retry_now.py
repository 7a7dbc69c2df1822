"""`retry-now RECEIVER` and `POST /-/retry-now`: after an operator fixed what failed, a
receiver's open circuits close and its waiting retries go at once, not after the cooldown
and the backoff (an hour here); against a real relay, a real sink and the real CLI."""

from __future__ import annotations

import asyncio

from tests.conftest import TOKEN, circuit_opened, wait_for
from tests.forkserver import run_relay

HOOK = """
receivers:
  - name: hook
    urls: ["{sink}", "{sink2}"]
  - name: other
    urls: ["{sink3}"]
routes:
  - name: all
    match: {event: "delivery.*"}
    receivers: [hook]
"""
# Two failures open a URL's circuit for ten minutes; a failed job waits an hour to retry.
GIVE = 'give "receiver": "name" (and "url": N for one of its URLs only), or "all": true'
SENDING = "circuit: {failures: 2, cooldown: 10m}\n  retry: {schedule: [0, 1h], jitter: 0}"


def event(delivery_id: str) -> dict[str, str]:
    return {"event": "delivery.updated", "delivery_id": delivery_id, "status": "in_transit",
            "timestamp": "2024-09-14T14:30:00Z"}


async def failing(running, sink):
    """A relay whose hook URL #0 failed until its circuit opened, with 3 jobs waiting."""
    sink.script["/a"] = [500, 500]
    r = await running(HOOK.replace("{sink}", sink.url("a", token="SECRETa"))
                      .replace("{sink2}", sink.url("b")).replace("{sink3}", sink.url("c")),
                      sink="", sending=SENDING)
    for d in ("D-1", "D-2", "D-3"):
        assert (await r.post(event(d)))[0] == 202
    await wait_for(lambda: len(sink.messages("b")) == 3)  # URL #1 is its own: it sends
    state = await wait_for(lambda: circuit_opened(r.relay, "hook"))
    assert state.backlog == 3 and sink.hits.count("/a") == 2
    return r


def cli(*args, config):
    return run_relay([*args, "-c", str(config)], capture_output=True, text=True, timeout=30)


async def test_retry_now_from_the_cli_sends_the_waiting_retries_of_a_running_relay(
        running, sink, tmp_path):
    r = await failing(running, sink)
    assert r.relay.worker.running
    out = await asyncio.to_thread(cli, "retry-now", "hook", "--url", "0",
                                  config=tmp_path / "config.yaml")
    assert (out.returncode, out.stdout, out.stderr) == (
        0, "hook[0] json://***: circuit closed; 2 waiting retries go now\n", "")
    await wait_for(lambda: len(sink.messages("a")) == 3)  # the two retries and the third job
    assert sorted(m["title"].split(":")[0] for m in sink.messages("a")) == [
        "Delivery D-1", "Delivery D-2", "Delivery D-3"]
    assert len(sink.messages("b")) == 3  # URL #1 sent nothing twice
    again = await asyncio.to_thread(cli, "retry-now", "hook", config=tmp_path / "config.yaml")
    assert again.stdout.splitlines() == [
        "hook[0] json://***: circuit closed; 0 waiting retries go now",
        "hook[1] json://***: circuit closed; 0 waiting retries go now"]
    everyone = await asyncio.to_thread(cli, "retry-now", "--all",
                                       config=tmp_path / "config.yaml")
    assert everyone.stdout.splitlines() == again.stdout.splitlines() + [
        "other[0] json://***: circuit closed; 0 waiting retries go now"]


async def test_retry_now_cli_errors_are_one_line_that_names_what_exists(running, sink,
                                                                      tmp_path):
    await running(HOOK.replace("{sink}", sink.url("a")).replace("{sink2}", sink.url("b"))
                  .replace("{sink3}", sink.url("c")), sink="")
    cfg = tmp_path / "config.yaml"
    for args, said in [
        (["nobody"], f'error: no receiver "nobody" in {cfg} (its receivers: hook, other)'),
        (["hook", "--url", "2"],
         'error: receiver "hook" has 2 URL(s), urls[0] to urls[1]: there is no --url 2'),
        ([], "error: give a receiver's name (and --url N for one of its URLs), or --all"),
        (["hook", "--all"], "error: give a receiver's name (and --url N for one of its URLs),"
                            " or --all"),
        (["--all", "--url", "0"], "error: give a receiver's name (and --url N for one of its"
                                  " URLs), or --all"),
        (["hook", "--url", "-1"], "error: Invalid value for '--url': -1 is not in the range"
                                  " x>=0 (see python -m relay retry-now --help)"),
    ]:
        out = await asyncio.to_thread(cli, "retry-now", *args, config=cfg)
        assert (out.returncode != 0, out.stdout, out.stderr.strip()) == (True, "", said)


async def admin(r, body, raw=None, token="admin-secret"):
    headers = {"Authorization": f"Bearer {token}"}
    async with r.session.post(r.url + "/-/retry-now", json=body if raw is None else None,
                              data=raw, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_retry_now_through_the_admin_api(running, sink):
    r = await failing(running, sink)
    assert await admin(r, {"receiver": "hook"}, token=TOKEN) == (
        401, {"error": "Unauthorized", "details": "missing or invalid admin token"})
    bad = "Invalid request data"
    for body, details in [
        ({}, GIVE), ([1], GIVE), ({"receiver": 7}, GIVE), ({"all": "yes"}, GIVE),
        ({"all": True, "receiver": "hook"}, GIVE), ({"all": True, "url": 0}, GIVE),
        ({"receiver": "hook", "url": 2}, '"url" must be a place in the receiver\'s urls,'
                                         " from 0 to 1"),
        ({"receiver": "hook", "url": "0"}, '"url" must be a place in the receiver\'s urls,'
                                           " from 0 to 1"),
        ({"receiver": "hook", "url": True}, '"url" must be a place in the receiver\'s urls,'
                                            " from 0 to 1"),
    ]:
        assert await admin(r, body) == (400, {"error": bad, "details": details}), body
    assert await admin(r, {"receiver": ""}) == (400, {"error": bad, "details":
                                                    "the receiver's name is empty"})
    status, answer = await admin(r, {"receiver": "nobody"})
    assert (status, answer["error"]) == (400, bad) and "nobody" in answer["details"]
    assert (await admin(r, None, raw=b"{not json"))[0] == 400
    assert sink.hits.count("/a") == 2  # none of those touched the circuit

    assert await admin(r, {"receiver": "hook", "url": 0}) == (200, {"retried": 2, "urls": [
        {"receiver": "hook", "url_index": 0, "retried": 2}]})
    await wait_for(lambda: len(sink.messages("a")) == 3)
    assert await admin(r, {"receiver": "other"}) == (200, {"retried": 0, "urls": [
        {"receiver": "other", "url_index": 0, "retried": 0}]})
    assert await admin(r, {"all": True}) == (200, {"retried": 0, "urls": [
        {"receiver": "hook", "url_index": 0, "retried": 0},
        {"receiver": "hook", "url_index": 1, "retried": 0},
        {"receiver": "other", "url_index": 0, "retried": 0}]})


async def test_retry_now_all_with_no_receivers_says_so_instead_of_printing_nothing(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f'server:\n  tokens: ["{TOKEN}"]\nstore:\n  url: "sqlite:{tmp_path}/r.db"\n'
                   "receivers: []\n")
    assert (await asyncio.to_thread(cli, "migrate", config=cfg)).returncode == 0
    out = await asyncio.to_thread(cli, "retry-now", "--all", config=cfg)
    assert (out.returncode, out.stdout, out.stderr) == (
        0, f"{cfg} has no receivers: nothing to retry\n", "")
