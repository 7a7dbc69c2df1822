"""Run the slowest test files first, so that under xdist no worker starts a long one last.

The seconds each file took are kept in pytest's cache (`.pytest_cache`, key
`kourier/file-seconds`) at the end of a run; the next run sorts files by them,
slowest first, and keeps the order of the tests inside a file (module fixtures
stay set up once). A fresh clone has no cache: it takes the seconds committed in
`tests/file-seconds.json` (wall seconds per file in a `make test`; refresh it
with `python -m tests.ordering` after a run when files were added or grew). A
file neither knows goes first; with `-p no:cacheprovider` the order is pytest's own. `make test` hands out
whole files (`--dist loadfile`), so a module fixture is built once, not once per worker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

KEY = "kourier/file-seconds"
SEED = Path(__file__).with_name("file-seconds.json")
_seconds: dict[str, float] = {}


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache = getattr(config, "cache", None)
    if cache is None:
        return
    known: dict[str, float] = {**json.loads(SEED.read_text()), **cache.get(KEY, {})}
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


if __name__ == "__main__":  # write the cache's seconds to the committed seed
    root = Path(__file__).resolve().parent.parent
    data = json.loads((root / ".pytest_cache" / "v" / KEY).read_text())
    files = {f: s for f, s in data.items() if (root / f).exists()}
    SEED.write_text(json.dumps(dict(sorted(files.items(), key=lambda x: (-x[1], x[0]))),
                               indent=0) + "\n")
    print(f"{SEED}: {len(files)} files", file=sys.stderr)
