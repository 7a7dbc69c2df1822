"""Email threads: the thread headers added to Apprise's own for one send, to a real SMTP server."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from relay.config import ReceiverConfig
from relay.live.email import is_email, thread_headers, thread_id
from relay.notify import Notifier
from tests.conftest import free_port


@dataclass
class Mailbox:
    envelopes: list[Any] = field(default_factory=list)
    port: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def messages(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(e.content, policy=email.policy.default)  # type: ignore
                for e in self.envelopes]

    def url(self) -> str:
        return (f"mailto://127.0.0.1:{self.port}?from=relay@example.com&to=ops@example.com")


@pytest.fixture
def smtp() -> Iterator[Mailbox]:
    box = Mailbox(port=free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


def notifier(url: str) -> Notifier:
    return Notifier({"ops-mail": ReceiverConfig("ops-mail", (url,))},
                    ThreadPoolExecutor(max_workers=1), 5.0)


def test_every_mail_of_a_delivery_refers_to_one_thread_and_has_one_message_id(smtp) -> None:
    n = notifier(smtp.url())
    headers = thread_headers(thread_id("D1", "lifecycle", "ops-mail", 0))
    for body in ("created", "in transit"):
        assert n.send_blocking("ops-mail", 0, "Delivery D1", body, "info", "text", headers).sent
    first, second = smtp.messages()
    for mail in (first, second):
        assert mail["In-Reply-To"] == headers["In-Reply-To"] == mail["References"]
        assert len(mail.get_all("Message-ID")) == 1
        assert mail["Subject"] == "Delivery D1"
    assert first["Message-ID"] != second["Message-ID"] != headers["In-Reply-To"]


def test_thread_headers_join_the_urls_own_for_one_send_only(smtp) -> None:
    n = notifier(f"mailto://127.0.0.1:{smtp.port}?from=relay@example.com&to=ops@example.com"
                 "&+X-Team=ops")
    headers = thread_headers("<t@x.invalid>")
    assert n.send_blocking("ops-mail", 0, "Delivery D1", "created", "info", "text", headers).sent
    assert n.send_blocking("ops-mail", 0, "Delivery D2", "created", "info", "text").sent
    threaded, plain = smtp.messages()
    assert (threaded["X-Team"], threaded["In-Reply-To"], threaded["References"]) == (
        "ops", "<t@x.invalid>", "<t@x.invalid>")
    assert plain["X-Team"] == "ops" and plain["In-Reply-To"] is None  # the pooled object is clean
    assert is_email(f"mailto://127.0.0.1:{smtp.port}?from=a@example.com&to=b@example.com")
    assert not is_email("json://127.0.0.1:9/")


def test_thread_ids_are_stable_per_delivery_route_and_url_and_hide_the_delivery_id() -> None:
    a = thread_id("D1", "lifecycle", "ops-mail", 0)
    assert a == thread_id("D1", "lifecycle", "ops-mail", 0)
    assert len({a, thread_id("D2", "lifecycle", "ops-mail", 0),
                thread_id("D1", "other", "ops-mail", 0), thread_id("D1", "lifecycle", "ops-mail", 1)}) == 4
    assert "D1" not in a and a.startswith("<") and a.endswith(".invalid>")
