"""The example events follow Kourier's contract, and the docs' `route` examples run as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from datetime import datetime

import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.events import parse_event
from tests.conftest import ROOT
from tests.forkserver import run_relay

EVENTS = ROOT / "examples" / "events"
# Where each example goes with config.example.yaml.
REACHES = {"created": "log", "in_transit": "log", "delivered": "log", "failed": "ops-chat",
           "cancelled": "ops-chat"}
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("KOURIER_", "OPS_"))}
UNSET = [k for k in os.environ if k.startswith(("KOURIER_", "OPS_"))]


def test_there_is_one_example_of_each_kind():
    assert sorted(p.stem for p in EVENTS.glob("*.json")) == sorted(REACHES)


@pytest.mark.parametrize("name", sorted(REACHES))
def test_an_example_event_is_shaped_as_kourier_sends_it(name):
    """KOURIER.md: event, delivery_id, timestamp (ISO 8601, UTC) always; status on changes."""
    body = json.loads((EVENTS / f"{name}.json").read_text())
    assert body["event"] in ("delivery.created", "delivery.updated", "delivery.cancelled")
    assert isinstance(body["delivery_id"], str) and body["delivery_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["timestamp"])
    datetime.fromisoformat(body["timestamp"])
    assert ("status" in body) == (body["event"] == "delivery.updated")
    if "status" in body:
        assert body["status"] == name
    extra = set(body) - {"event", "delivery_id", "timestamp", "status"}
    assert "tracking_url" in extra, "examples carry the fields real deliveries do"
    parse_event((EVENTS / f"{name}.json").read_bytes())


@pytest.mark.parametrize("name", sorted(REACHES))
def test_an_example_event_reaches_its_receiver_in_the_example_config(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    done = CliRunner().invoke(main, ["route", "-c", "config.example.yaml",
                                     f"examples/events/{name}.json", "--expect", REACHES[name]],
                              env=dict.fromkeys(UNSET))
    assert done.exit_code == 0, done.output
    assert f"receivers: {REACHES[name]}" in done.stdout


def console_examples(command: str) -> list[tuple[str, list[str]]]:
    """Every `$ <command> …` in the README and docs/ console blocks, with the output shown."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```console\n(.*?)```", page.read_text(), re.S):
            for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
                line, *output = chunk.rstrip("\n").split("\n")
                if line.startswith(command):
                    found.append((line, output))
    return found


def matches(shown: list[str], actual: list[str]) -> bool:
    """`…` on a line of its own stands for any number of lines."""
    pattern = "\n".join(".*?" if line == "…" else re.escape(line) for line in shown)
    return re.fullmatch(pattern, "\n".join(actual), re.S) is not None


ROUTE_EXAMPLES = console_examples("kourier-relay route ")
CHECK_EXAMPLES = console_examples("kourier-relay check ")


def test_the_docs_show_route_examples_on_the_example_events():
    assert [line for line, _ in ROUTE_EXAMPLES if "examples/events/failed.json" in line]


@pytest.mark.parametrize("line, shown", ROUTE_EXAMPLES, ids=[x[0] for x in ROUTE_EXAMPLES])
def test_a_route_example_in_the_docs_runs_exactly_as_written(line, shown):
    words = shlex.split(line)
    done = run_relay(words[1:], cwd=ROOT, env=CLEAN_ENV, text=True,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert matches(shown, done.stdout.rstrip("\n").split("\n")), done.stdout
    assert done.returncode == (1 if any(s.startswith("error:") for s in shown) else 0)


@pytest.mark.parametrize("line, shown", CHECK_EXAMPLES, ids=[x[0] for x in CHECK_EXAMPLES])
def test_a_check_example_in_the_docs_runs_exactly_as_written(line, shown, monkeypatch):
    """Findings on stdout, the summary on stderr: both shown, in this order."""
    monkeypatch.chdir(ROOT)
    done = CliRunner().invoke(main, shlex.split(line)[1:], env=dict.fromkeys(UNSET))
    assert done.stdout.splitlines() + done.stderr.splitlines() == shown


def test_the_docs_say_where_check_prints_its_findings():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = " ".join(" ".join(p.read_text() for p in pages).split())
    assert "`check` prints its findings on stdout, one per line" in text
    assert "the summary line goes to stderr" in text
