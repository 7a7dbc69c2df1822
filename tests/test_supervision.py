"""Background work is never silent: a crash is logged with its traceback and /readyz says so."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp

from relay.decision import Report
from tests.conftest import wait_for

EVENT = {"event": "delivery.updated", "delivery_id": "d1", "status": "in_transit",
         "timestamp": "2024-09-14T14:30:00Z"}


async def readyz(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/readyz") as r:
        return r.status, await r.json()


class BrokenObserver:
    def observe(self, report: Report) -> None:
        raise RuntimeError(f"observer bug on job {report.job.id}")


def tracebacks(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == f"{name} crashed" and r.exc_info]


async def test_a_crashing_send_task_is_logged_with_its_traceback_and_fails_readyz(
        running, sink, caplog):
    r = await running(f'receivers: [{{name: x, urls: ["{sink.url("x")}"]}}]\n'
                      "default_receiver: x\n")
    r.relay.worker.subscribe(BrokenObserver())
    assert (await readyz(r.url))[0] == 200
    assert (await r.post(EVENT))[0] == 202
    status, body = await wait_for(lambda: _not_ready(r.url), message="readyz to fail")
    assert body == {"status": "not ready",
                    "checks": {"config": True, "store": True, "worker": False},
                    "reasons": {"send of job 1": "crashed: RuntimeError: observer bug on job 1"}}
    [record] = tracebacks(caplog, "send of job 1")
    assert record.exc_info and record.exc_info[0] is RuntimeError


async def test_a_crashing_background_task_is_logged_and_fails_readyz(running, caplog):
    r = await running()

    async def doomed() -> None:
        raise ValueError("the digest timer broke")

    r.relay.supervise("digest-timer", doomed())
    status, body = await wait_for(lambda: _not_ready(r.url), message="readyz to fail")
    assert status == 503
    assert body["reasons"] == {"digest-timer": "crashed: ValueError: the digest timer broke"}
    assert tracebacks(caplog, "digest-timer")


async def test_a_crash_of_the_worker_loop_itself_fails_readyz(running, sink, caplog):
    """The loop buries a removed receiver's jobs and tells observers: a bug there kills it."""
    r = await running(f'receivers: [{{name: x, urls: ["{sink.url("x")}"]}},'
                      f' {{name: y, urls: ["{sink.url("y")}"]}}]\n'
                      "default_receiver: x\n")
    await r.relay.worker.pause()
    assert (await r.post(EVENT))[0] == 202
    cfg = Path(r.relay.config_path)
    text = cfg.read_text().replace(f'{{name: x, urls: ["{sink.url("x")}"]}},', "")
    cfg.write_text(text.replace("default_receiver: x", "default_receiver: y"))
    await r.relay.reload()
    r.relay.worker.subscribe(BrokenObserver())
    r.relay.worker.resume()
    status, body = await wait_for(lambda: _not_ready(r.url), message="readyz to fail")
    assert body["reasons"] == {"worker": "crashed: RuntimeError: observer bug on job 1"}
    assert tracebacks(caplog, "worker")
    assert not r.relay.worker.running


async def _not_ready(url: str) -> tuple[int, dict] | None:
    status, body = await readyz(url)
    return (status, body) if status == 503 else None
