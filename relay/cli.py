"""`kourier-relay` commands (with `cli_support`, `cli_client`, `cli_dead`: the only modules
that print or exit)."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

import click

from relay import __version__, cli_client, cli_dead, cli_status
from relay import config as config_mod
from relay.cli_client import health_url as health_url  # re-exported: the container's facts
from relay.cli_support import CONFIG_ENV as CONFIG_ENV
from relay.cli_support import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH
from relay.cli_support import DEFAULT_PORT as DEFAULT_PORT
from relay.cli_support import (
    Listen,
    OneLineErrors,
    config_option,
    fail,
    guarded,
    load_config,
    run_store,
    shown_issue,
)
from relay.errors import InvalidEvent
from relay.events import parse_event
from relay.logs import setup
from relay.yamlfile import read_at_most

if TYPE_CHECKING:
    from relay.store import Store


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kourier-relay")
def main() -> None:
    """Kourier delivery webhooks in, routed notifications out."""


@main.command()
@config_option
@click.option("--listen", type=Listen(), help="host:port, overriding server.listen.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="Least severe log lines shown.")
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(["text", "json"]), help="Log lines as text or as JSON objects.")
@guarded
def serve(config_path: str, listen: str | None, log_level: str, log_format: str) -> None:
    """Run the relay."""
    # A config that cannot load fails before the server's imports; the relay runs on what
    # was read here (one read: no file changed between the check and the start).
    loaded = config_mod.load_text(config_path)
    import asyncio

    from relay.app import serve as run

    setup(log_level, log_format)
    try:
        asyncio.run(run(config_path, listen=listen, loaded=loaded,
                        log_args=["--log-level", log_level, "--log-format", log_format]))
    except OSError as e:
        address = listen or loaded[1].server.listen
        problem = listen_problem(e, address)
        if problem is None:
            raise
        fail(problem)
    # Everything is committed or released by now. A send still blocked in a thread
    # past the grace period would hold the interpreter's exit until its socket
    # timeout (pool threads are joined at exit), so leave without waiting for it.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


# What to change when listening fails with this errno ({host}: the host of server.listen).
LISTEN_PROBLEMS = {
    errno.EADDRINUSE: "the port is already in use (another relay?): stop that process,"
                      " or choose a free port in server.listen (or --listen)",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE):"
                  " choose a port of 1024 or above in server.listen (or --listen)",
    errno.EADDRNOTAVAIL: "{host} is not an address of this machine: use one of its addresses"
                         " in server.listen (or --listen), or 0.0.0.0 for all",
    errno.EINVAL: "{host} cannot be listened on (a multicast or IPv4-mapped address?): use"
                  " one of this machine's addresses in server.listen (or --listen), or 0.0.0.0"
                  " for all",
}


def listen_problem(e: OSError, address: str) -> str | None:
    """What to change when the server cannot listen on `address`; None for other errors."""
    host = address.rpartition(":")[0] or "0.0.0.0"
    where = f"cannot listen on {address}"
    if isinstance(e, socket.gaierror):
        return (f"{where}: the host {host!r} does not resolve: set server.listen (or --listen)"
                " to an IP address or a name of this machine, e.g. 0.0.0.0:8080")
    problem = LISTEN_PROBLEMS.get(e.errno) if e.errno is not None else None
    return None if problem is None else f"{where}: {problem.format(host=host)}"


@main.command()
@config_option
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@guarded
def check(config_path: str, strict: bool) -> None:
    """Validate the config without sending anything.

    One line per finding, `file:line: key.path: message`; errors exit 1,
    warnings only with --strict.
    """
    from relay.lint import lint

    issues = lint(config_path)
    for issue in issues:
        click.echo(shown_issue(issue))  # messages never carry a URL's secrets (see config, notify)
    errors = sum(1 for i in issues if i.severity == "error")
    warnings = len(issues) - errors
    if errors or (strict and warnings):
        click.echo(f"{config_path}: {errors} error(s), {warnings} warning(s)", err=True)
        sys.exit(1)
    click.echo(f"{config_path}: OK ({warnings} warning(s))", err=True)


@main.command(short_help="Dry run: which routes an event matches and what would be sent.")
@config_option
@click.argument("event_file", metavar="EVENT.json|-")
@click.option("--expect", metavar="A,B", help="Receivers the event must reach, comma-separated"
              " ('' for none); exit 1 if it reaches others.")
@guarded
def route(config_path: str, event_file: str, expect: str | None) -> None:
    """Dry run: which routes an event matches, why others do not, and what would be sent."""
    from relay.explain import explain

    config = load_config(config_path)
    try:
        event = parse_event(_read_event(event_file, config.server.max_body_bytes))
    except InvalidEvent as e:
        fail(f"{_source_name(event_file)}: {e.error}: {e.details}")
    report, receivers = explain(config, event)
    click.echo(report)
    if expect is not None:
        wanted = [r.strip() for r in expect.split(",") if r.strip()]
        if sorted(wanted) != sorted(receivers):
            fail(f"expected receivers {','.join(wanted) or '(none)'},"
                 f" got {','.join(receivers) or '(none)'}")


def _read_event(name: str, limit: int) -> bytes:
    """The event file's bytes, read no further than the webhook would (`limit`, the
    config's server.max_body_bytes): a larger one is refused, an endless one too."""
    try:
        data = read_at_most(sys.stdin.buffer if name == "-" else name, limit)
    except OSError as e:
        fail(f"{name}: cannot read: {e.strerror or e}")
    if data is None:
        fail(f"{_source_name(name)}: more than server.max_body_bytes ({limit} bytes): the relay"
             " would refuse this event with 413")
    return data


def _source_name(name: str) -> str:
    return "<stdin>" if name == "-" else name


@main.command()
@config_option
@guarded
def migrate(config_path: str) -> None:
    """Create or upgrade the store's schema, then exit."""
    from relay.store import SCHEMA_VERSION

    async def noop(store: Store) -> None:
        return None

    run_store(config_path, noop, create=True)
    click.echo(f"store schema is at version {SCHEMA_VERSION}")


main.add_command(cli_client.send)
main.add_command(cli_client.healthcheck)
main.add_command(cli_dead.dead)
main.add_command(cli_status.delivery)
main.add_command(cli_status.receivers)
main.add_command(cli_status.retry_now)
