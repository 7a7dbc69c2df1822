"""Config keys that were renamed: still read, with a `check` warning naming the new key.

The old `delivery:` section mixed how the relay sends (now `sending:`) with a
rule about parcel deliveries (now `deliveries.suppress_stale`); "delivery"
only ever means a Kourier parcel delivery.
"""

from __future__ import annotations

from typing import Any

from relay.schema import Checker, kind_of


def sending_sections(top: dict[str, Any], c: Checker,
                     ) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The checked `sending:` and `deliveries:` values, and the path the sending ones came from."""
    deliveries = c.section(top.get("deliveries"), "deliveries", "deliveries")
    if "delivery" not in top:
        return c.section(top.get("sending"), "sending", "sending"), deliveries, "sending"
    if "sending" in top:
        c.error("delivery", 'the old "delivery:" section and "sending:" are both here:'
                ' move everything into "sending:"')
    old = dict(top.get("delivery") or {}) if isinstance(top.get("delivery"), dict) else {}
    if "suppress_stale" in old:
        c.warn("delivery.suppress_stale",
               'renamed: write "deliveries: {suppress_stale: ...}" (it is about parcel deliveries)')
        if "suppress_stale" in deliveries:
            c.error("delivery.suppress_stale", 'also set in "deliveries:": keep only that one')
        value = old.pop("suppress_stale")
        if isinstance(value, bool):
            deliveries.setdefault("suppress_stale", value)
        else:
            c.error("delivery.suppress_stale", f"expected true or false, got {kind_of(value)}")
    if old:
        c.warn("delivery", 'renamed: call this section "sending:" (the old name still works'
               ' for now); "delivery" only ever means a Kourier parcel delivery')
    return c.section(old, "delivery", "sending"), deliveries, "delivery"
