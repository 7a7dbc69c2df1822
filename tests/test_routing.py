"""Routing table: event -> receivers, against one config with every matcher form."""

from __future__ import annotations

import pytest

from relay import config
from relay.events import event_from_dict
from relay.routing import Router

ROUTES = """
server: {tokens: [t]}
receivers:
  - {name: log, urls: ["console://"]}
  - {name: ops, urls: ["console://"]}
  - {name: audit, urls: ["console://"]}
  - {name: vip, urls: ["console://"]}
  - {name: refunds, urls: ["console://"]}
  - {name: north, urls: ["console://"]}
routes:
  - name: audit-cancels
    match: {event: delivery.cancelled}
    receivers: [audit]
    continue: true
  - name: cancels
    match: {event: delivery.cancelled}
    receivers: [ops]
  - name: vip
    match: {customer.tier: {regex: "gold|platinum"}, status: {not: delivered}}
    receivers: [vip]
  - name: problems
    match: {event: "delivery.*", status: [failed, returned]}
    receivers: [ops]
  - name: north
    match: {address.zip: {regex: "1[0-9]{4}"}, items.0.sku: "BOX-*"}
    receivers: [north]
  - name: refunds
    match: {event: delivery.refunded}
    receivers: [refunds]
  - name: noted
    match: {note: {exists: true}, status: in_transit}
    receivers: [audit]
default_receiver: log
"""


def ev(**fields):
    return event_from_dict({"delivery_id": "d1", "timestamp": "2024-09-14T14:30:00Z", **fields})


@pytest.fixture(scope="module")
def router():
    return Router.from_config(config.loads(ROUTES, env={}))


@pytest.mark.parametrize("event, receivers", [
    (ev(event="delivery.cancelled"), ["audit", "ops"]),                       # continue, then first match
    (ev(event="delivery.updated", status="failed"), ["ops"]),                 # any-of + glob
    (ev(event="delivery.created", status="returned"), ["ops"]),               # glob on event
    (ev(event="delivery.updated", status="in_transit"), ["log"]),             # default receiver
    (ev(event="delivery.updated", status="in_transit", customer={"tier": "gold"}), ["vip"]),
    (ev(event="delivery.updated", status="delivered", customer={"tier": "gold"}), ["log"]),  # negation
    (ev(event="delivery.updated", status="failed", customer={"tier": "goldish"}), ["ops"]),  # anchored
    (ev(event="delivery.updated", status="x", address={"zip": "10115"},
        items=[{"sku": "BOX-1"}]), ["north"]),                                # nested + list index
    (ev(event="delivery.updated", status="x", address={"zip": "20115"},
        items=[{"sku": "BOX-1"}]), ["log"]),
    (ev(event="delivery.updated", status="in_transit", note="ring twice"), ["audit"]),  # exists
    (ev(event="delivery.refunded"), ["refunds"]),                 # unknown type, named explicitly
    (ev(event="parcel.lost"), []),                                # unknown type: no default
    (ev(event="delivery.updated"), ["log"]),                      # missing status matches nothing
])
def test_event_reaches_expected_receivers(router, event, receivers):
    assert router.match(event).receiver_names == receivers


def test_first_match_wins_without_continue(router):
    match = router.match(ev(event="delivery.cancelled", status="failed"))
    assert [r.name for r in match.routes] == ["audit-cancels", "cancels"]


def test_receiver_named_by_two_matched_routes_gets_one_notification():
    cfg = config.loads("""
    server: {tokens: [t]}
    receivers: [{name: a, urls: ["console://"]}]
    routes:
      - {match: {event: delivery.created}, receivers: [a], continue: true}
      - {match: {delivery_id: d1}, receivers: [a]}
    """, env={})
    assert Router.from_config(cfg).match(ev(event="delivery.created")).receiver_names == ["a"]


def test_numbers_in_yaml_match_numbers_and_strings_in_payload():
    cfg = config.loads("""
    server: {tokens: [t]}
    receivers: [{name: a, urls: ["console://"]}]
    routes: [{match: {attempt: 3, priority: 1}, receivers: [a]}]
    """, env={})
    router = Router.from_config(cfg)
    assert router.match(ev(event="delivery.updated", attempt=3, priority="1")).receiver_names == ["a"]
    assert router.match(ev(event="delivery.updated", attempt=True, priority=1)).receiver_names == []
