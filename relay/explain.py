"""`route` dry run: which routes match an event, why others do not, and what would be sent."""

from __future__ import annotations

from relay.app import build_runtime
from relay.config import Config
from relay.events import Event


def explain(config: Config, event: Event) -> tuple[str, list[str]]:
    """A readable report and the receivers the event reaches."""
    rt = build_runtime(config)
    assert rt.planner is not None
    plan = rt.planner.plan(event)
    lines = [f"event: {event.type} delivery={event.delivery_id}"
             + ("" if event.known else "  (unknown event type)"), "", "routes:"]
    stop_after = None
    for route in rt.planner.router.routes:
        failed = route.failed(event)
        if route in plan.match.routes:
            cont = " (continue)" if route.config.continue_ else ""
            lines.append(f"  MATCH  {route.name}{cont} -> {', '.join(route.config.receivers)}")
            if not route.config.continue_:
                stop_after = route.name
        elif stop_after:
            lines.append(f"  skip   {route.name}: not evaluated, {stop_after!r} matched first")
        else:
            why = "; ".join(f"{m.describe} (is {_show(event.get(m.path, '<missing>'))})"
                            for m in failed)
            lines.append(f"  no     {route.name}: {why}")
    if not plan.match.routes:
        default = config.default_receiver if event.known else ""
        lines.append(f"  (no route matched; default receiver: {default or 'none'})")
    lines += ["", "notifications:" if plan.notifications else "notifications: none"]
    channels = rt.notifier.channels()
    for n in plan.notifications:
        ch = channels[n.receiver][n.url_index]
        limit = f"/{ch.body_max}" if ch.body_max else ""
        lines.append(f"  -> {n.receiver}[{n.url_index}] {ch.label}  route={n.route}"
                     f"  type={n.type}  format={n.format}")
        lines.append(f"     title ({len(n.title)}/{ch.title_max or '-'}): {n.title}")
        lines.append(f"     body ({len(n.body)}{limit} chars){' TRUNCATED' if n.truncated else ''}:")
        lines += [f"       {line}" for line in n.body.splitlines()]
    return "\n".join(lines), plan.match.receiver_names


def _show(value: object) -> str:
    return repr(value) if not isinstance(value, str) or value != "<missing>" else value
