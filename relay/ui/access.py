"""Who may see the status page: the admin or viewer token, as a bearer header or a session.

A session is a signed cookie, `role.expires.nonce.mac`, keyed by a digest of
that role's token: nothing is stored, so it survives a restart and works on
every replica, and changing the token (a reload) ends every session of its
role. Logging out forgets the nonce in this process; other replicas accept a
copied cookie until it expires. The CSRF token of a session is derived from
its nonce with the same key: one per session, never stored either.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

Role = Literal["admin", "viewer"]
SESSION_TTL = 12 * 3600.0
COOKIE = "kourier_session"
# A cookie as `Sessions.issue` writes it; anything else (other digits, other bytes, other
# lengths, which int() and encode() would choke on) is no session.
_COOKIE = re.compile(r"(?P<role>admin|viewer)\.(?P<expires>[0-9]{1,12})"
                     r"\.(?P<nonce>[A-Za-z0-9_-]{1,64})\.(?P<mac>[0-9a-f]{64})")


@dataclass(frozen=True)
class Tokens:
    admin: str
    viewer: str

    @property
    def enabled(self) -> bool:
        return bool(self.admin or self.viewer)

    def secret(self, role: Role) -> str:
        return self.admin if role == "admin" else self.viewer


@dataclass(frozen=True)
class Visitor:
    role: Role
    csrf: str = ""  # empty: a bearer header, which a cross-site form cannot send

    @property
    def may_replay(self) -> bool:
        return self.role == "admin"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def role_for(given: str, tokens: Tokens) -> Role | None:
    """The role a token grants, compared in constant time (digests: any bytes compare)."""
    if not given:
        return None
    digest = _digest(given)
    found: Role | None = None
    for role in ("admin", "viewer"):  # no early exit: time does not say which one matched
        secret = tokens.secret(role)  # type: ignore[arg-type]
        if hmac.compare_digest(digest, _digest(secret)) and secret:
            found = found or role  # type: ignore[assignment]
    return found


def bearer_role(header: str | None, tokens: Tokens) -> Role | None:
    scheme, _, token = (header or "").partition(" ")
    return role_for(token.strip(), tokens) if scheme.lower() == "bearer" else None


def _key(role: Role, tokens: Tokens) -> bytes:
    return hashlib.sha256(b"kourier-relay status page\0" + tokens.secret(role).encode()).digest()


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


class Sessions:
    """Issues and checks session cookies; remembers the nonces logged out here."""

    def __init__(self) -> None:
        self._ended: dict[str, float] = {}  # nonce -> when its cookie would have expired

    def issue(self, role: Role, tokens: Tokens, now: float) -> str:
        body = f"{role}.{int(now + SESSION_TTL)}.{secrets.token_urlsafe(18)}"
        return f"{body}.{_mac(_key(role, tokens), body)}"

    def check(self, cookie: str | None, tokens: Tokens, now: float) -> Visitor | None:
        found = _COOKIE.fullmatch(cookie or "")
        if found is None:
            return None
        role: Role = found["role"]  # type: ignore[assignment]
        if not tokens.secret(role) or int(found["expires"]) <= now or found["nonce"] in self._ended:
            return None
        key = _key(role, tokens)
        body = f"{role}.{found['expires']}.{found['nonce']}"
        if not hmac.compare_digest(found["mac"].encode(), _mac(key, body).encode()):
            return None
        return Visitor(role, _mac(key, "csrf\0" + found["nonce"])[:32])

    def end(self, cookie: str | None, now: float) -> None:
        found = _COOKIE.fullmatch(cookie or "")
        if found is not None:
            self._ended[found["nonce"]] = float(found["expires"])
        self._ended = {n: t for n, t in self._ended.items() if t > now}


class LoginThrottle:
    """Failed logins per client address: after `limit` within `window` seconds, the form
    refuses every try (429, even the right token) until that window, which began with
    the first failure, has passed. A success forgets the address's failures. At most
    `addresses` are remembered (the longest quiet go first), so a flood of addresses
    costs bounded memory. Behind a proxy every client shares the proxy's address: a
    guesser there locks the form for everyone for one window, never opens it."""

    def __init__(self, limit: int = 10, window: float = 300.0,
                 addresses: int = 10_000) -> None:
        self.limit, self.window, self.addresses = limit, window, addresses
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def wait(self, address: str, now: float) -> float:
        """Seconds until `address` may try again; 0 if it may now."""
        start, count = self._failures.get(address, (now, 0))
        if now - start >= self.window:
            self._failures.pop(address, None)
            return 0.0
        return start + self.window - now if count >= self.limit else 0.0

    def failed(self, address: str, now: float) -> None:
        start, count = self._failures.pop(address, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        self._failures[address] = (start, count + 1)
        while len(self._failures) > self.addresses:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


def csrf_ok(visitor: Visitor, given: str | None) -> bool:
    """A bearer visitor needs none; a session must send its own token."""
    if not visitor.csrf:
        return True
    return hmac.compare_digest(_digest(given or ""), _digest(visitor.csrf))
