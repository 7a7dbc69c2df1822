"""Email threads through Apprise's `+Header=` parameters, to a real local SMTP server."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import apprise
import pytest
from aiosmtpd.controller import Controller

from relay.live.email import is_email, thread_id, threaded_url
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


@pytest.fixture
def smtp() -> Iterator[Mailbox]:
    box = Mailbox(port=free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


def send(url: str, title: str, body: str) -> bool:
    obj = apprise.Apprise()
    assert obj.add(url)
    return bool(obj.notify(title=title, body=body))


def test_every_mail_of_a_delivery_refers_to_one_thread_and_has_one_message_id(smtp) -> None:
    url = f"mailto://127.0.0.1:{smtp.port}?from=relay@example.com&to=ops@example.com"
    thread = thread_id("D1", "lifecycle", "ops-mail", 0)
    assert send(threaded_url(url, thread), "Delivery D1", "created")
    assert send(threaded_url(url, thread), "Delivery D1", "in transit")
    first, second = smtp.messages()
    for mail in (first, second):
        assert mail["In-Reply-To"] == thread and mail["References"] == thread
        assert len(mail.get_all("Message-ID")) == 1
        assert mail["Subject"] == "Delivery D1"
    assert first["Message-ID"] != second["Message-ID"] != thread


def test_thread_ids_are_stable_per_delivery_route_and_url_and_hide_the_delivery_id() -> None:
    a = thread_id("D1", "lifecycle", "ops-mail", 0)
    assert a == thread_id("D1", "lifecycle", "ops-mail", 0)
    assert len({a, thread_id("D2", "lifecycle", "ops-mail", 0),
                thread_id("D1", "other", "ops-mail", 0), thread_id("D1", "lifecycle", "ops-mail", 1)}) == 4
    assert "D1" not in a and a.startswith("<") and a.endswith(".invalid>")


def test_threaded_url_keeps_the_urls_own_parameters() -> None:
    url = "mailtos://user:pw@mail.example.com?to=ops@example.com&+X-Team=ops"
    plugin = apprise.Apprise.instantiate(threaded_url(url, "<t@x.invalid>"))
    assert plugin.headers == {"X-Team": "ops", "In-Reply-To": "<t@x.invalid>",
                              "References": "<t@x.invalid>"}
    assert is_email(url) and not is_email("json://127.0.0.1:9/")
