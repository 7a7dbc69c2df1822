from __future__ import annotations

from tests.conftest import wait_for


async def test_accepted_event_reaches_json_sink(running, sink):
    r = await running(f"""
    receivers:
      - name: hook
        urls: ["{sink.url('hook')}"]
    default_receiver: hook
    """)
    status, body, _ = await r.post({"event": "delivery.updated", "delivery_id": "abc123",
                                    "status": "in_transit", "timestamp": "2024-09-14T14:30:00Z"})
    assert status == 202 and body["status"] == "accepted"
    msgs = await wait_for(lambda: sink.messages("hook"))
    assert msgs[0]["title"] == "Delivery abc123: In transit"
