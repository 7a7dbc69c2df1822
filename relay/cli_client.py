"""`send` and `healthcheck`: the commands that talk to a running relay over HTTP."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import click

from relay import __version__
from relay.cli_support import HttpUrl, Seconds, config_option, guarded, load_config
from relay.config import Config


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
    host = config.server.host.removeprefix("[").removesuffix("]")  # listen: "[::1]:8080"
    # All addresses: this machine's loopback of that family ("::" is IPv6 only: app.bind
    # leaves socket.create_server its IPV6_V6ONLY, so 127.0.0.1 finds nothing there).
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.server.port}{path}"


@click.command(short_help="Fire a sample Kourier event at a running relay.")
@config_option
@click.argument("event_type", default="delivery.updated", metavar="[EVENT_TYPE]")
@click.option("--url", type=HttpUrl(),
              help="Webhook URL (default: from the config's server.listen and path).")
@click.option("--token", help="Bearer token (default: the config's first server token).")
@click.option("--delivery-id", help="Default: a fresh test-… id.")
@click.option("--status", help="Delivery status (default in_transit for delivery.updated).")
@click.option("--field", "extra", multiple=True, type=_field, metavar="KEY=VALUE",
              help="Extra payload field; dotted keys nest, JSON values are parsed.")
@click.option("--timeout", default=5.0, show_default=True, type=Seconds(zero=True),
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
                return answer.status, _shown(answer.read(ANSWER_SHOWN + 1))
        except urllib.error.HTTPError as e:
            return e.code, _shown(e.read(ANSWER_SHOWN + 1))
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


ANSWER_SHOWN = 4096  # a relay's answer is a line; a --url that is not a relay may send anything


def _shown(answer: bytes) -> str:
    """The answer as printed: at most ANSWER_SHOWN bytes of it (the rest is never read)."""
    text = answer[:ANSWER_SHOWN].decode(errors="replace").strip()
    return f"{text} … (cut at {ANSWER_SHOWN} bytes)" if len(answer) > ANSWER_SHOWN else text


# Redirects would re-send the body without asking; a relay never redirects a webhook.
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def health_url(config: Config) -> str:
    """Where this config's relay answers `/healthz` on this machine."""
    return _local_url(config, "/healthz")


@click.command(short_help="Exit 0 when the relay answers /healthz (for containers).")
@config_option
@click.option("--url", type=HttpUrl(),
              help="Health URL (default: /healthz at the config's server.listen).")
@click.option("--timeout", default=3.0, show_default=True, type=Seconds(),
              help="Seconds to wait for the answer.")
@guarded
def healthcheck(config_path: str, url: str | None, timeout: float) -> None:
    """Exit 0 when the relay answers /healthz (for container health checks).

    The address comes from the config's server.listen (0.0.0.0 means 127.0.0.1, [::] ::1),
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
