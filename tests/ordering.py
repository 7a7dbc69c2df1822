"""Run the slowest test files first, so that under xdist no worker starts a long one last.

The seconds each file took are kept in pytest's cache (`.pytest_cache`, key
`kourier/file-seconds`) at the end of a run; the next run sorts files by them,
slowest first, and keeps the order of the tests inside a file (module fixtures
stay set up once). A file the cache does not know yet goes first, and without
the cache (`-p no:cacheprovider`) the order is pytest's own. `make test` hands out
whole files (`--dist loadfile`), so a module fixture is built once, not once per worker.
"""

from __future__ import annotations

import pytest

KEY = "kourier/file-seconds"
_seconds: dict[str, float] = {}


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache = getattr(config, "cache", None)
    known: dict[str, float] = cache.get(KEY, {}) if cache is not None else {}
    if not known:
        return
    first = {}  # each file's place in pytest's order, to break ties the same way every time
    for n, item in enumerate(items):
        first.setdefault(_file(item.nodeid), n)
    items.sort(key=lambda item: (-known.get(_file(item.nodeid), float("inf")),
                                 first[_file(item.nodeid)]))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Under xdist this runs in the controller too, which sees every worker's reports.
    _seconds[_file(report.nodeid)] = _seconds.get(_file(report.nodeid), 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    cache = getattr(session.config, "cache", None)
    if cache is None or hasattr(session.config, "workerinput") or not _seconds:
        return
    cache.set(KEY, {**cache.get(KEY, {}), **{f: round(s, 2) for f, s in _seconds.items()}})
