"""The runtime compiled from one config: router, templates, watches, planner, notifier, warnings.

Built before anything goes live and swapped whole on reload. `check` and
`route` build it too, which is why this module imports neither the server,
the worker nor the store.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from relay.config import Config
from relay.errors import ConfigError, Issue
from relay.notify import Notifier, Sender, check_urls
from relay.pipeline import Planner
from relay.routing import Router
from relay.templating import Templates
from relay.watches import Watches

T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    """Everything compiled from one config; the worker, the web app and the CLI read it.

    `notifier` knows the receivers' channels and can send in this process; `sender`
    is what Apprise sends go through (`send_with()`): the notifier, or the send
    processes (`relay.sendpool`) with `sending.processes` > 1.
    """

    config: Config
    planner: Planner
    notifier: Notifier
    warnings: tuple[Issue, ...] = ()  # compile-time findings that do not stop the config
    sender: Sender | None = None

    def send_with(self) -> Sender:
        return self.sender or self.notifier


# `check` and `route` build a notifier but never send: this pool never starts a thread.
_DRY_RUN_EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dry-run")


def build_runtime(config: Config, executor: Executor | None = None,
                  sender: Sender | None = None) -> Runtime:
    """Compile every piece, collecting all errors: raise ConfigError, or return the runtime."""
    issues: list[Issue] = []
    router = _collecting(Router.from_config, config, issues)
    templates = _collecting(Templates.from_config, config, issues)
    watches = _collecting(Watches.from_config, config, issues)
    issues += check_urls(config)
    errors = [i for i in issues if i.severity == "error"]
    if errors:
        raise ConfigError(sorted(errors, key=lambda i: i.line))
    assert router and templates and watches is not None
    notifier = Notifier(config.receivers, executor or _DRY_RUN_EXECUTOR,
                        config.sending.attempt_timeout)
    planner = Planner(config, router, templates, notifier.channels(), watches)
    return Runtime(config, planner, notifier, tuple(i for i in issues if i.severity != "error"),
                   sender)


def _collecting(build: Callable[[Config], T], config: Config, issues: list[Issue]) -> T | None:
    """`build(config)`, its issues added to `issues` when it fails (MatcherError is one)."""
    try:
        return build(config)
    except ConfigError as e:
        issues += e.issues
        return None
