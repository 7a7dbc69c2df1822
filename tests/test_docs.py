"""The README documents what the code does: every config key, and a config that passes check."""

from __future__ import annotations

from relay.config import SCHEMAS
from tests.conftest import ROOT

SECTIONS = {"": "", "server": "server.", "store": "store.", "delivery": "delivery.",
            "retry": "delivery.retry.", "circuit": "delivery.circuit.", "receiver": "receivers[].",
            "route": "routes[].", "template": ""}


def test_every_config_key_is_in_the_readme_reference():
    readme = (ROOT / "README.md").read_text()
    missing = []
    for section, prefix in SECTIONS.items():
        for key in SCHEMAS[section]:
            if section == "template" or key in ("server", "store", "delivery", "receivers",
                                                "routes", "templates", "retry", "circuit"):
                needle = key  # sections are documented by their keys
            else:
                needle = f"`{prefix}{key}`"
            if needle not in readme:
                missing.append(prefix + key)
    assert not missing, f"README.md does not document: {missing}"
