"""The rendered message: what a template gives and every notification, job and live message carries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    """A rendered title and body, the Apprise type and the body format (`text`, `markdown`, `html`)."""

    title: str
    body: str
    type: str
    format: str

    def plain(self) -> str:
        """Title and body as one text, a line apart (the one that is there, if only one is)."""
        return f"{self.title}\n{self.body}" if self.title and self.body else self.title or self.body
