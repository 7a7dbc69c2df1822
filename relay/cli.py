"""`kourier-relay` commands. The only module that prints or exits."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import wraps
from http import HTTPStatus
from typing import Any, TypeVar

import click

from relay import __version__
from relay import config as config_mod
from relay.config import Config
from relay.errors import ConfigError, InvalidEvent, RelayError
from relay.events import parse_event
from relay.logs import scrub, setup
from relay.store import Store, open_store

DEFAULT_CONFIG_PATH = "/etc/kourier-relay/config.yaml"
CONFIG_ENV = "KOURIER_RELAY_CONFIG"
DEFAULT_PORT = 8080
T = TypeVar("T")


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {scrub(message)}", err=True)
    sys.exit(code)


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-c", "--config", "config_path", envvar=CONFIG_ENV,
                        default=DEFAULT_CONFIG_PATH, show_default=True, metavar="FILE",
                        help=f"Config file (env {CONFIG_ENV}).")(f)


def guarded(f: Callable[..., T]) -> Callable[..., T]:
    """Turn the relay's own errors into one readable line and a non-zero exit."""
    @wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ConfigError as e:
            for issue in e.issues:
                click.echo(str(issue), err=True)
            sys.exit(1)
        except RelayError as e:
            fail(str(e))
    return wrapper


def load_config(path: str) -> Config:
    return config_mod.load(path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kourier-relay")
def main() -> None:
    """Kourier delivery webhooks in, routed notifications out."""


@main.command()
@config_option
@click.option("--listen", help="host:port, overriding server.listen.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="Least severe log lines shown.")
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(["text", "json"]), help="Log lines as text or as JSON objects.")
@guarded
def serve(config_path: str, listen: str | None, log_level: str, log_format: str) -> None:
    """Run the relay."""
    from relay.app import serve as run

    setup(log_level, log_format)
    try:
        asyncio.run(run(config_path, listen=listen,
                        log_args=["--log-level", log_level, "--log-format", log_format]))
    except OSError as e:
        address = listen or load_config(config_path).server.listen
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


def listen_problem(e: OSError, address: str) -> str | None:
    """What to change when the server cannot listen on `address`; None for other errors."""
    host = address.rpartition(":")[0] or "0.0.0.0"
    where = f"cannot listen on {address}"
    if isinstance(e, socket.gaierror):
        return (f"{where}: the host {host!r} does not resolve: set server.listen (or --listen)"
                " to an IP address or a name of this machine, e.g. 0.0.0.0:8080")
    if e.errno == errno.EADDRINUSE:
        return (f"{where}: the port is already in use (another relay?): stop that process,"
                " or choose a free port in server.listen (or --listen)")
    if e.errno == errno.EACCES:
        return (f"{where}: permission denied (ports below 1024 need root or"
                " CAP_NET_BIND_SERVICE): choose a port of 1024 or above in server.listen"
                " (or --listen)")
    if e.errno == errno.EADDRNOTAVAIL:
        return (f"{where}: {host} is not an address of this machine: use one of its"
                " addresses in server.listen (or --listen), or 0.0.0.0 for all")
    return None


@main.command("send-only", hidden=True)
@config_option
@click.option("--log-level", default="info")
@click.option("--log-format", default="text")
@guarded
def send_only(config_path: str, log_level: str, log_format: str) -> None:
    """A sending-only process, started by `serve` when sending.processes > 1."""
    from relay.app import send_only as run

    setup(log_level, log_format)
    code = asyncio.run(run(config_path))
    logging.shutdown()
    os._exit(code)  # as in serve: do not wait for a send thread stuck past the grace period


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
        click.echo(str(issue))  # messages never carry a URL's secrets (see config, notify)
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

    try:
        event = parse_event(_read_event(event_file))
    except InvalidEvent as e:
        fail(f"{_source_name(event_file)}: {e.error}: {e.details}")
    report, receivers = explain(load_config(config_path), event)
    click.echo(report)
    if expect is not None:
        wanted = [r.strip() for r in expect.split(",") if r.strip()]
        if sorted(wanted) != sorted(receivers):
            fail(f"expected receivers {','.join(wanted) or '(none)'},"
                 f" got {','.join(receivers) or '(none)'}")


def _read_event(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as e:
        fail(f"{name}: cannot read: {e.strerror or e}")
    raise AssertionError("unreachable")


def _source_name(name: str) -> str:
    return "<stdin>" if name == "-" else name


def _field(value: str) -> tuple[str, Any]:
    key, sep, raw = value.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{value!r} is not key=value")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def sample_event(event_type: str, delivery_id: str | None, status: str | None,
                 extra: list[tuple[str, Any]]) -> dict[str, Any]:
    """A Kourier-shaped body; `extra` keys are dotted paths (`customer.tier`)."""
    body: dict[str, Any] = {
        "event": event_type,
        "delivery_id": delivery_id or f"test-{uuid.uuid4().hex[:8]}",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if status or event_type == "delivery.updated":
        body["status"] = status or "in_transit"
    for key, value in extra:
        target = body
        *parents, last = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
            if not isinstance(target, dict):
                raise click.BadParameter(f"{key}: {p} is already a value, not an object",
                                         param_hint="--field")
        target[last] = value
    return body


def _local_url(config: Config, path: str) -> str:
    host = config.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.server.port}{path}"


@main.command(short_help="Fire a sample Kourier event at a running relay.")
@config_option
@click.argument("event_type", default="delivery.updated", metavar="[EVENT_TYPE]")
@click.option("--url", help="Webhook URL (default: from the config's server.listen and path).")
@click.option("--token", help="Bearer token (default: the config's first server token).")
@click.option("--delivery-id", help="Default: a fresh test-… id.")
@click.option("--status", help="Delivery status (default in_transit for delivery.updated).")
@click.option("--field", "extra", multiple=True, type=_field, metavar="KEY=VALUE",
              help="Extra payload field; dotted keys nest, JSON values are parsed.")
@click.option("--timeout", default=5.0, show_default=True,
              help="Seconds to wait for the relay's answer; a relay still starting (connection"
                   " refused) is tried again until then.")
@guarded
def send(config_path: str, event_type: str, url: str | None, token: str | None,
         delivery_id: str | None, status: str | None, extra: tuple[tuple[str, Any], ...],
         timeout: float) -> None:
    """Fire a sample Kourier event at a running relay, like Kourier would.

    EVENT_TYPE defaults to delivery.updated (with status in_transit). Prints
    the relay's answer; exits 1 unless it is a 2xx.
    """
    if not url or not token:
        config = load_config(config_path)
        url = url or _local_url(config, config.server.path)
        token = token or config.server.tokens[0]
    body = json.dumps(sample_event(event_type, delivery_id, status, list(extra))).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}",
        "User-Agent": f"kourier-relay-send/{__version__}"})
    click.echo(f"POST {_without_password(url)}\n{body.decode()}")
    status_code, answer = _http(request, timeout)
    click.echo(f"{status_code} {_reason(status_code)} {answer}".rstrip())
    if not 200 <= status_code < 300:
        sys.exit(1)


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _http(request: urllib.request.Request, timeout: float) -> tuple[int, str]:
    """Status and body of the answer; any answer counts, only no answer at all fails.

    A refused connection is a relay still starting (`serve … &` then `send`): it is
    tried again until `timeout` has passed.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with _OPENER.open(request, timeout=max(deadline - time.monotonic(), 0.1)) as answer:
                return answer.status, answer.read().decode(errors="replace").strip()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace").strip()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ConnectionRefusedError) and time.monotonic() < deadline:
                time.sleep(0.05)  # a starting relay binds within a second or so
                continue
            waited = f" (waited {timeout:g}s)" if isinstance(reason, ConnectionRefusedError) else ""
            # Not `fail`: it masks URLs, and this one is the relay's own address, not a secret.
            click.echo(f"error: cannot reach {_without_password(request.full_url)}: {reason}"
                       f"{waited}", err=True)
            sys.exit(1)


# Redirects would re-send the body without asking; a relay never redirects a webhook.
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def health_url(config: Config) -> str:
    """Where this config's relay answers `/healthz` on this machine."""
    return _local_url(config, "/healthz")


@main.command(short_help="Exit 0 when the relay answers /healthz (for containers).")
@config_option
@click.option("--url", help="Health URL (default: /healthz at the config's server.listen).")
@click.option("--timeout", default=3.0, show_default=True, help="Seconds to wait for the answer.")
@guarded
def healthcheck(config_path: str, url: str | None, timeout: float) -> None:
    """Exit 0 when the relay answers /healthz (for container health checks).

    The address comes from the config's server.listen (0.0.0.0 means 127.0.0.1),
    unless --url is given; then the config is not read.
    """
    url = url or health_url(load_config(config_path))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError) as e:
        # Not `fail`: it masks URLs, and this one is the relay's own address, not a secret.
        click.echo(f"error: {_without_password(url)} did not answer: {getattr(e, 'reason', e)}",
                   err=True)
        sys.exit(1)
    if status != 200:
        click.echo(f"error: {_without_password(url)} answered {status} {_reason(status)}",
                   err=True)
        sys.exit(1)


def run_store(config_path: str, action: Callable[[Store], Coroutine[Any, Any, T]],
              create: bool = False) -> T:
    """Run `action` on the config's store; only a writer (`create`) may bring a new one about."""
    config = load_config(config_path)
    if not create:
        _require_existing(config)

    async def go() -> T:
        store = open_store(config.store.url, busy_timeout=config.store.busy_timeout,
                           create=create)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _require_existing(config: Config) -> None:
    """A command that only reads must not create an empty store and report it empty."""
    if not config.store.url.startswith("sqlite:"):
        return
    from relay.store.sqlite import sqlite_path

    path = sqlite_path(config.store.url)
    if not os.path.exists(path):
        fail(f"no store at {path} (store.url in {config.source.file}; a relative sqlite: path"
             " is relative to the config file's folder): check store.url, or start the relay"
             " once with serve")


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


@main.group()
def dead() -> None:
    """Inspect and replay dead jobs."""


@dead.command("list")
@config_option
@click.option("--receiver", help="Only this receiver's jobs.")
@click.option("--limit", default=100, show_default=True, help="Show at most this many jobs.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the jobs as a JSON array (the admin API's shape) instead of a table.")
@guarded
def dead_list(config_path: str, receiver: str | None, limit: int, as_json: bool) -> None:
    """List dead jobs."""
    jobs = run_store(config_path, lambda s: s.dead(receiver, limit))
    if as_json:
        from relay.web import job_json

        click.echo(json.dumps([job_json(j) for j in jobs], indent=2))
        return
    if not jobs:
        click.echo("no dead jobs")
        return
    click.echo(f"{'JOB':>6}  {'RECEIVER':<16} {'DELIVERY':<14} {'ATTEMPTS':>8}  LAST ERROR")
    for j in jobs:
        click.echo(f"{j.id:>6}  {j.receiver:<16} {j.delivery_id:<14} {j.attempts:>8}"
                   f"  {j.last_error[:80]}")


@dead.command("show")
@config_option
@click.argument("job_id", type=int)
@guarded
def dead_show(config_path: str, job_id: int) -> None:
    """Show one job: its event, rendered message and every attempt."""
    detail = run_store(config_path, lambda s: s.detail(job_id))
    if detail is None:
        fail(f"no job {job_id}")
    assert detail is not None
    j = detail.job
    click.echo(f"job {j.id}  state={j.state}  receiver={j.receiver}[{j.url_index}]"
               f"  route={j.route}  attempts={j.attempts}")
    click.echo(f"event: {json.dumps(detail.event)}")
    click.echo(f"title: {j.title}\nbody:\n{j.body}\nattempts:")
    for a in detail.history:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.at))
        click.echo(f"  {at}  {a.outcome:<8} {a.duration:6.2f}s  {a.error}")


@dead.command("replay")
@config_option
@click.argument("job_ids", type=int, nargs=-1)
@click.option("--receiver", help="Replay every dead job of this receiver.")
@click.option("--all", "everything", is_flag=True, help="Replay every dead job.")
@guarded
def dead_replay(config_path: str, job_ids: tuple[int, ...], receiver: str | None,
                everything: bool) -> None:
    """Queue dead jobs again, exactly as they were rendered.

    Exits 1, saying why, when a job id is not a dead job or nothing was replayed.
    """
    if not (job_ids or receiver or everything):
        fail("give job ids, --receiver NAME or --all")

    async def replay(store: Store) -> tuple[int, list[str]]:
        problems = [p for p in [await _not_dead(store, i) for i in job_ids] if p]
        wanted = [i for i in job_ids if not any(p.startswith(f"job {i} ") for p in problems)]
        if job_ids and not wanted:
            return 0, problems
        return await store.replay(wanted or None, receiver, time.time()), problems

    count, problems = run_store(config_path, replay)
    click.echo(f"replayed {count} job(s)")
    if problems:
        fail("; ".join(problems))
    if count == 0:
        fail(_why_nothing(load_config(config_path), receiver))


async def _not_dead(store: Store, job_id: int) -> str:
    detail = await store.detail(job_id)
    if detail is None:
        return f"job {job_id} does not exist"
    if detail.job.state != "dead":
        return f"job {job_id} is {detail.job.state}, not dead"
    return ""


def _why_nothing(config: Config, receiver: str | None) -> str:
    if receiver and receiver not in config.receivers:
        names = ", ".join(sorted(config.receivers))
        return f'receiver "{receiver}" is not in {config.source.file} (its receivers: {names})' \
               " and has no dead jobs"
    if receiver:
        return f'receiver "{receiver}" has no dead jobs'
    return "there are no dead jobs"
