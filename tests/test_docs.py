"""The README documents what the code does: every config key, and a config that passes check."""

from __future__ import annotations

from relay.config import SCHEMAS
from tests.conftest import ROOT

SECTIONS = {"": "", "server": "server.", "store": "store.", "sending": "sending.",
            "deliveries": "deliveries.", "retry": "sending.retry.", "circuit": "sending.circuit.",
            "receiver": "receivers[].", "route": "routes[].", "template": ""}


def test_every_config_key_is_in_the_readme_reference():
    readme = (ROOT / "README.md").read_text()
    missing = []
    for section, prefix in SECTIONS.items():
        for key in SCHEMAS[section]:
            if section == "template" or key in ("server", "store", "sending", "deliveries",
                                                "delivery", "receivers", "routes", "templates",
                                                "retry", "circuit"):
                needle = key  # sections are documented by their keys
            else:
                needle = f"`{prefix}{key}`"
            if needle not in readme:
                missing.append(prefix + key)
    assert not missing, f"README.md does not document: {missing}"


def test_commented_receiver_examples_in_the_example_config_are_valid(tmp_path, monkeypatch):
    """Uncommenting the Slack, Discord, email and SMS examples gives a config that passes check."""
    from relay.lint import lint

    text = (ROOT / "config.example.yaml").read_text()
    text = text.replace("\n  # - name:", "\n  - name:").replace("\n  #   ", "\n    ")
    path = tmp_path / "all-receivers.yaml"
    path.write_text(text)
    env = {"SLACK_URL": "slack://T0001/B0002/XXXXXXXX/#ops", "DISCORD_URL": "discord://1234/abcd",
           "SMTP_USER": "relay", "SMTP_PASSWORD": "pw",
           "TWILIO_SID": "AC0123456789abcdef0123456789abcdef", "TWILIO_TOKEN": "tok"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    issues = lint(str(path))
    assert [i for i in issues if i.severity == "error"] == []
    unused = sorted(i.message for i in issues)
    assert len(unused) == 4 and all("never used" in m for m in unused)
