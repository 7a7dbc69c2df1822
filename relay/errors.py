"""The relay's exceptions.

    RelayError
    ├── ConfigError        the config has one or more issues (each with file:line)
    ├── InvalidEvent       an inbound body is not a Kourier event (HTTP 400/415)
    ├── StoreError         the store cannot take or give data (HTTP 503)
    │   └── SchemaTooNew   the database was written by a newer relay
    └── StaleClaim         a job was finished by a worker that no longer owns it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


@dataclass(frozen=True)
class Issue:
    """One finding about a config file: where, which key, what."""

    file: str
    line: int
    path: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.path}:" if self.path else ""
        tag = "" if self.severity == "error" else f" {self.severity}:"
        return f"{where}:{key}{tag} {self.message}"


class ConfigError(RelayError):
    """The config cannot be used; `issues` lists every error found."""

    def __init__(self, issues: list[Issue], warnings: tuple[Issue, ...] = ()) -> None:
        self.issues = issues
        self.warnings = warnings  # found next to them (`check` shows both, in line order)
        super().__init__("\n".join(str(i) for i in issues))


class InvalidEvent(RelayError):
    """An inbound request body that is not an acceptable Kourier event."""

    def __init__(self, error: str, details: str, status: int = 400) -> None:
        self.error = error
        self.details = details
        self.status = status
        super().__init__(f"{error}: {details}")


class StoreError(RelayError):
    """The store is unavailable (disk full, locked, gone); callers answer 503."""


class SchemaTooNew(StoreError):
    """The database schema is newer than this relay understands."""


class StaleClaim(RelayError):
    """A job result was reported under a claim that has since been taken over."""
