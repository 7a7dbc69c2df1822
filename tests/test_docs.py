"""The docs say what the code does: every config key, working links, a config that passes check."""

from __future__ import annotations

import re

import pytest

from relay.config import SCHEMAS
from tests.conftest import ROOT

SECTIONS = {"": "", "server": "server.", "store": "store.", "sending": "sending.",
            "deliveries": "deliveries.", "retry": "sending.retry.", "circuit": "sending.circuit.",
            "receiver": "receivers[].", "route": "routes[].", "template": "",
            "watch": "watches[]."}


def test_every_config_key_is_in_the_configuration_reference():
    readme = (ROOT / "docs" / "configuration.md").read_text()
    missing = []
    for section, prefix in SECTIONS.items():
        for key in SCHEMAS[section]:
            if section == "template" or key in ("server", "store", "sending", "deliveries",
                                                "delivery", "receivers", "routes", "templates",
                                                "retry", "circuit", "watches"):
                needle = key  # sections are documented by their keys
            else:
                needle = f"`{prefix}{key}`"
            if needle not in readme:
                missing.append(prefix + key)
    assert not missing, f"docs/configuration.md does not document: {missing}"


def test_commented_receiver_examples_in_the_example_config_are_valid(tmp_path, monkeypatch):
    """Uncommenting the Slack, Discord, email and SMS examples (and the live route, which uses
    the Slack bot) gives a config that passes check: the bot's URL can edit."""
    from relay.lint import lint

    text = (ROOT / "config.example.yaml").read_text()
    text = text.replace("\n  # - name:", "\n  - name:").replace("\n  #   ", "\n    ")
    path = tmp_path / "all-receivers.yaml"
    path.write_text(text)
    env = {"SLACK_URL": "slack://T0001/B0002/XXXXXXXX/#ops", "DISCORD_URL": "discord://1234/abcd",
           "SLACK_BOT_URL": "slack://xoxb-1-2-abcd/#ops",
           "SMTP_USER": "relay", "SMTP_PASSWORD": "pw",
           "TWILIO_SID": "AC0123456789abcdef0123456789abcdef", "TWILIO_TOKEN": "tok"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    issues = lint(str(path))
    assert [i for i in issues if i.severity == "error"] == []
    unused = sorted(i.message for i in issues)
    assert len(unused) == 4 and all("never used" in m for m in unused)


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"(?m)^#+ (.*)$", text)}


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: p.name)
def test_every_relative_link_in_the_docs_reaches_a_file_and_heading(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        missing_anchor = file.exists() and bool(anchor) and file.suffix == ".md" \
            and anchor not in _anchors(file.read_text())
        if not file.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_the_readme_is_a_front_page_and_the_reference_lives_in_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    for page in ("configuration", "webhook", "guarantees", "commands", "operations",
                 "container", "performance", "architecture", "watches"):
        assert f"docs/{page}.md" in readme, f"the README does not link docs/{page}.md"
