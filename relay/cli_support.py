"""What every `kourier-relay` command shares: the config option, one-line errors, the store."""

from __future__ import annotations

import logging
import math
import os
import sys
import urllib.parse
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

import click

from relay import config as config_mod
from relay.config import Config
from relay.errors import ConfigError, Issue, RelayError
from relay.logs import scrub
from relay.schema import SCHEMAS, shown

if TYPE_CHECKING:  # the store (and asyncio) load when a command opens it: `healthcheck` never does
    from relay.store import Store

DEFAULT_CONFIG_PATH = "/etc/kourier-relay/config.yaml"
CONFIG_ENV = "KOURIER_RELAY_CONFIG"
DEFAULT_PORT = 8080
T = TypeVar("T")


JOB_ID = click.IntRange(1, 2**63 - 1)  # what the stores' integer ids can hold


class Checked(click.ParamType, Generic[T]):
    """A value `parse` reads, or refuses by raising ValueError (or TypeError): click's
    `Invalid value for '--x': …` then gives `refusal`, in our words."""

    def parse(self, value: Any) -> T:
        raise NotImplementedError

    def refusal(self, value: Any, error: Exception) -> str:
        return str(error)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None,
                ) -> T:
        try:
            return self.parse(value)
        except (TypeError, ValueError) as e:
            self.fail(self.refusal(value, e), param, ctx)


class Seconds(Checked[float]):
    """A timeout in seconds: a finite number above 0 (or 0 too, with `zero`)."""

    name = "seconds"

    def __init__(self, zero: bool = False) -> None:
        self.zero = zero

    def parse(self, value: Any) -> float:
        seconds = float(value)
        if not (math.isfinite(seconds) and (seconds > 0 or self.zero and seconds == 0)):
            raise ValueError(seconds)
        return seconds

    def refusal(self, value: Any, error: Exception) -> str:
        return f"expected seconds ({'0 or more' if self.zero else 'more than 0'}), got {value}"


class HttpUrl(Checked[str]):
    """An http:// or https:// URL (shown masked when it is not one: it may hold a password)."""

    name = "url"

    def parse(self, value: Any) -> str:
        parts = urllib.parse.urlsplit(str(value))  # refuses an unclosed [
        _ = parts.port  # refuses a port that is not a number or is out of range
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(value)
        return str(value)

    def refusal(self, value: Any, error: Exception) -> str:
        return f"expected an http:// or https:// URL, got {shown(str(value))}"


class Listen(Checked[str]):
    """`host:port`, as `server.listen` takes it (its refusal is the config's)."""

    name = "host:port"

    def parse(self, value: Any) -> str:
        return str(SCHEMAS["server"]["listen"](value))


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {scrub(message)}", err=True)
    sys.exit(code)


class OneLineErrors(click.Group):
    """click's usage errors as every other error of ours: one `error: …` line (click prints
    a usage block, a hint and the error), with the exit code click gives them (2)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            rv = super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.exceptions.NoArgsIsHelpError as e:  # a group run bare: its help
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx else "kourier-relay"
            fail(f"{e.format_message().rstrip('.')} (see {where} --help)", e.exit_code)
        except click.ClickException as e:
            fail(e.format_message(), e.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except Exception as e:  # a bug, or a store changed outside the relay
            unexpected(e)
        sys.exit(rv if isinstance(rv, int) else 0)


TRACEBACK_ENV = "KOURIER_RELAY_TRACEBACK"
INTERNAL_ERROR = 70  # EX_SOFTWARE


def unexpected(e: Exception) -> NoReturn:
    """An exception none of our errors stands for: one line naming its type and where in the
    relay it was raised (never its text, which may quote anything), and exit 70. `serve`'s
    log keeps the whole traceback; `KOURIER_RELAY_TRACEBACK=1` prints it here too."""
    if os.environ.get(TRACEBACK_ENV) == "1":
        raise e
    if logging.getLogger().handlers:  # `serve` has set up its log
        logging.getLogger("relay").critical("stopped by an unexpected error", exc_info=e)
    where = ""
    package = os.path.dirname(os.path.abspath(__file__))
    tb = e.__traceback__
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep):
            path = os.path.relpath(tb.tb_frame.f_code.co_filename, os.path.dirname(package))
            where = f" in {path}:{tb.tb_lineno} ({tb.tb_frame.f_code.co_name})"
        tb = tb.tb_next
    fail(f"unexpected {type(e).__name__}{where}: a bug, or a store changed outside the relay;"
         f" {TRACEBACK_ENV}=1 prints the traceback", INTERNAL_ERROR)


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-c", "--config", "config_path", envvar=CONFIG_ENV,
                        default=DEFAULT_CONFIG_PATH, show_default=True, metavar="FILE",
                        help=f"Config file (env {CONFIG_ENV}).")(f)


def shown_issue(issue: Issue) -> str:
    """An issue as a command prints it: a missing config at the default path (no -c given,
    or so it looks) also says how to name one, which a first run needs to hear."""
    if issue.file == DEFAULT_CONFIG_PATH and issue.message.startswith("cannot read config"):
        return f"{issue} (the default path: give -c FILE, or set {CONFIG_ENV})"
    return str(issue)


def guarded(f: Callable[..., T]) -> Callable[..., T]:
    """Turn the relay's own errors into one readable line and a non-zero exit."""
    @wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except ConfigError as e:
            for issue in e.issues:
                click.echo(shown_issue(issue), err=True)
            sys.exit(1)
        except RelayError as e:
            fail(str(e))
    return wrapper


def load_config(path: str) -> Config:
    return config_mod.load(path)


def run_store(config_path: str, action: Callable[[Store], Coroutine[Any, Any, T]],
              create: bool = False) -> T:
    """Run `action` on the config's store; only a writer (`create`) may bring a new one about."""
    import asyncio

    from relay.store import open_store

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

    # The store logs what failed for a running relay's log; here the StoreError that
    # follows is the one line the operator gets.
    quiet = logging.getLogger("relay.store")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(go())
    finally:
        quiet.setLevel(level)


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
