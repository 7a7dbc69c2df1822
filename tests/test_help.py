"""`--help` reads as documentation: whole sentences, every option explained."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from relay.cli import main


def commands(group: click.Group = main, prefix: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], click.Command]]:
    for name, command in group.commands.items():
        if command.hidden:
            continue
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))


GROUPS = [(), ("dead",)]


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: " ".join(g) or "top")
def test_every_command_in_a_help_listing_is_a_whole_sentence(group):
    out = CliRunner().invoke(main, [*group, "--help"]).stdout
    listing = out.split("Commands:\n", 1)[1]
    entries = re.split(r"\n  (?=\S)", "\n" + listing.rstrip())[1:]
    assert entries
    for entry in entries:
        name, _, text = entry.partition(" ")
        text = " ".join(text.split())
        assert text.endswith(".") and not text.endswith("..."), f"{name}: {text!r}"


@pytest.mark.parametrize("path, command", list(commands()), ids=lambda x: " ".join(x)
                         if isinstance(x, tuple) else "")
def test_every_option_has_help_text(path, command):
    missing = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
    assert missing == []


def test_send_help_names_its_default_event_type():
    out = " ".join(CliRunner().invoke(main, ["send", "--help"]).stdout.split())
    assert "EVENT_TYPE defaults to delivery.updated (with status in_transit)." in out
    assert "a relay still starting (connection refused) is tried again" in out
