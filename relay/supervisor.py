"""Background tasks that are never silent: a crash is logged with its traceback and kept.

The relay's long-running tasks (the worker loop, purge, the config watch) and
its short ones (a notice's write) all run here. A crash is a bug: it is logged
with the traceback, remembered in `crashed` (which `/readyz` reports), and
handed to `on_crash` (`serve` stays up and answers not-ready).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from relay.logs import scrub

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self) -> None:
        self.crashed: dict[str, str] = {}  # task name -> "ExceptionType: message"
        self.on_crash: Callable[[str, BaseException], None] = lambda name, error: None
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self.crash(task.get_name(), error)

    def crash(self, name: str, error: BaseException) -> None:
        """Report a crash seen elsewhere (a send task), as if a supervised task had died."""
        log.error("%s crashed", name, exc_info=error)
        self.crashed[name] = scrub(f"{type(error).__name__}: {error}")  # /readyz is public
        self.on_crash(name, error)

    async def stop(self) -> None:
        """Cancel what still runs and wait for it; crashes during the stop are still logged."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
