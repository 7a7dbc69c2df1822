"""The runtime built from a config, and the worker's pure decision over one attempt."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from relay.config import RetryPolicy
from relay.decision import Dead, Postponed, Retry, Sent, decide
from relay.message import Message
from relay.notify import Outcome
from relay.store import Job
from tests.conftest import ROOT


def test_check_and_route_load_neither_the_server_nor_the_worker_nor_the_requests_tap():
    probe = ("import sys, requests, relay.lint, relay.explain, json;"
             "print(json.dumps({'modules': sorted(sys.modules),"
             " 'patched': requests.Session.send.__module__}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=30)
    seen = json.loads(out.stdout)
    loaded = set(seen["modules"])
    assert not {"aiohttp.web", "relay.worker", "relay.web", "relay.lifecycle", "relay.app"} \
        & loaded
    assert seen["patched"] == "requests.sessions"  # not ours: only serve and its send processes patch it


T = 1_800_000_000.0
POLICY = RetryPolicy(schedule=(0, 10, 60), jitter=0, max_age=3600)


def job(attempts: int = 0, created: float = T) -> Job:
    return Job(1, 1, "r", 0, "route", Message("t", "b", "info", "text"), "claimed", attempts,
               created, created)


@pytest.mark.parametrize("job_, outcome, now, expected", [
    (job(), Outcome("sent"), T, Sent()),
    (job(), Outcome("failed", "HTTP 400: bad"), T, Dead("HTTP 400: bad")),
    (job(), Outcome("retry", "HTTP 500"), T + 1, Retry(T + 11, 10, "HTTP 500")),
    (job(), Outcome("retry", "HTTP 429", 120), T, Retry(T + 120, 120, "HTTP 429")),
    (job(1), Outcome("retry", "HTTP 500"), T, Retry(T + 60, 60, "HTTP 500")),
    (job(2), Outcome("retry", "HTTP 500"), T,
     Dead("gave up after 3 attempts: HTTP 500")),
    (job(0, created=T - 3595), Outcome("retry", "HTTP 500"), T,
     Dead("gave up after 1 attempts: HTTP 500")),  # the next try would pass max_age
    (job(), Outcome("sent", live="edit"), T, Sent("edit")),  # a live send says what it did
    # another sender holds the live message: not an attempt, even with none left
    (job(2), Outcome("retry", "held", 1.0, postponed=True), T, Postponed(T + 1, "held")),
])
def test_decide_maps_job_outcome_policy_and_now_to_the_next_state(job_, outcome, now,
                                                                   expected):
    assert decide(job_, outcome, POLICY, now, random.Random(0)) == expected
