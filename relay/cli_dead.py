"""`dead list|show|replay`: the dead letters in the config's store."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from relay.cli_support import JOB_ID, config_option, fail, guarded, load_config, run_store
from relay.config import Config

if TYPE_CHECKING:
    from relay.store import Store


@click.group()
def dead() -> None:
    """Inspect and replay dead jobs."""


@dead.command("list")
@config_option
@click.option("--receiver", help="Only this receiver's jobs.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="Show at most this many jobs.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the jobs as a JSON array (the admin API's shape) instead of a table.")
@guarded
def dead_list(config_path: str, receiver: str | None, limit: int, as_json: bool) -> None:
    """List dead jobs."""
    from relay.events import unstorable

    # A name no store can hold (a non-UTF-8 byte from the shell) has no dead jobs.
    jobs = [] if receiver and unstorable(receiver) else \
        run_store(config_path, lambda s: s.dead(receiver, limit))
    if not jobs and receiver and receiver not in (config := load_config(config_path)).receivers:
        fail(_why_nothing(config, receiver))  # a misspelt name is not "no dead jobs" (nor [])
    if as_json:
        from relay.admin import job_json

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
@click.argument("job_id", type=JOB_ID)
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
    if j.last_error and (not detail.history or detail.history[-1].error != j.last_error):
        click.echo(f"why: {j.last_error}")  # a suppressed job has no attempt that says it
    click.echo(f"title: {j.message.title}\nbody:\n{j.message.body}\nattempts:")
    for a in detail.history:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.at))
        click.echo(f"  {at}  {a.outcome:<8} {a.duration:6.2f}s  {a.error}")


@dead.command("replay")
@config_option
@click.argument("job_ids", type=JOB_ID, nargs=-1)
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
    job_ids = tuple(dict.fromkeys(job_ids))  # one id given twice is one job

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
        return f"no job {job_id}"
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
