"""Who may use the console: operators from the environment, sessions, CSRF tokens.

Operators are listed in the environment variable ``[web] console_users_env`` names
(``LOYALCAST_CONSOLE_USERS`` by default), entries separated by commas or new lines:
``name:scrypt$<n>$<r>$<p>$<salt>$<hash>`` (``loyalcast console passwd NAME`` prints one;
salt and hash in URL-safe base64). No password is ever stored or logged in clear.

A session is a cookie, ``<payload>.<tag>``: the payload names the operator, when the
session ends (Unix seconds) and a random nonce (so each sign-in is a session of its own,
with its own CSRF token); the tag is HMAC-SHA256 over it under a key derived from the
link key for this purpose alone, and over the operator's password entry, so changing a
password ends that operator's sessions. Nothing is kept on the server.

Every form carries a CSRF token: for a signed-in operator, an HMAC of the session cookie
(so a token from another session, or none, is refused); for the login form, a random
nonce set as a cookie and echoed in the form, signed (double submit).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
"""scrypt's cost: 16 MiB and ~50 ms per check on one core (RFC 7914's interactive choice)."""
_ENTRY = re.compile(r"(?P<name>[A-Za-z0-9_.@-]{1,64}):(?P<hash>scrypt\$\d+\$\d+\$\d+\$[A-Za-z0-9_-]+=*\$[A-Za-z0-9_-]+=*)")
SESSION_COOKIE = "loyalcast_console"
LOGIN_COOKIE = "loyalcast_console_login"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The stored form of ``password``: ``scrypt$n$r$p$salt$hash``."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the stored form (constant time in the digest)."""
    try:
        _, n, r, p, salt, digest = stored.split("$")
        expected = _unb64(digest)
        found = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=128 * 1024 * 1024, dklen=len(expected)
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(found, expected)


def parse_operators(value: str, variable: str) -> dict[str, str]:
    """``{name: stored hash}`` from the variable's text; ValueError naming the entry
    (by position, never its text) that is not ``name:scrypt$...``."""
    operators: dict[str, str] = {}
    for position, entry in enumerate((e.strip() for e in re.split(r"[,\n]", value)), start=1):
        if not entry:
            continue
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise ValueError(
                f"{variable}: entry {position} is not name:scrypt$... (make one with: loyalcast console passwd NAME)"
            )
        operators[match["name"]] = match["hash"]
    return operators


def load_operators(variable: str) -> dict[str, str]:
    """The operators the environment variable lists (none when it is unset or empty)."""
    return parse_operators(os.environ.get(variable, ""), variable)


@dataclass(frozen=True)
class Session:
    operator: str
    expires: int
    """Unix seconds."""


class Guard:
    """Signs and checks sessions and CSRF tokens under ``key`` (at least 32 bytes)."""

    def __init__(self, key: bytes, operators: dict[str, str], lifetime_seconds: int) -> None:
        self._key = hmac.new(key, b"loyalcast-console", hashlib.sha256).digest()
        self.operators = operators
        self.lifetime = lifetime_seconds

    def _tag(self, purpose: bytes, payload: bytes) -> str:
        return _b64(hmac.new(self._key, purpose + b":" + payload, hashlib.sha256).digest())

    def login(self, name: str, password: str) -> str | None:
        """A session cookie for the operator, or None when name or password is wrong
        (a password is checked against a dummy entry for an unknown name, so both take
        the same time)."""
        stored = self.operators.get(name)
        matches = check_password(password, stored or _dummy())
        if stored is None or not matches:
            return None
        payload = f"{name}|{int(time.time()) + self.lifetime}|{secrets.token_urlsafe(12)}".encode()
        return f"{_b64(payload)}.{self._tag(b'session' + stored.encode(), payload)}"

    def session(self, cookie: str | None) -> Session | None:
        """The session the cookie proves, or None (missing, altered, expired, from a
        changed password or a removed operator)."""
        if not cookie or cookie.count(".") != 1:
            return None
        encoded, tag = cookie.split(".")
        try:
            payload = _unb64(encoded)
            name, expires, _ = payload.decode().split("|")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        stored = self.operators.get(name)
        if stored is None or not hmac.compare_digest(self._tag(b"session" + stored.encode(), payload), tag):
            return None
        if not expires.isdigit() or int(expires) < time.time():
            return None
        return Session(name, int(expires))

    def csrf_for_session(self, cookie: str) -> str:
        return self._tag(b"csrf", cookie.encode())

    def check_session_csrf(self, cookie: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_for_session(cookie), token or "")

    def login_nonce(self) -> tuple[str, str]:
        """(cookie value, form token) for the login form."""
        nonce = secrets.token_urlsafe(16)
        return nonce, f"{nonce}.{self._tag(b'login', nonce.encode())}"

    def check_login_csrf(self, cookie: str | None, token: str | None) -> bool:
        if not cookie or not token or token.count(".") != 1:
            return False
        nonce, tag = token.split(".")
        return hmac.compare_digest(nonce, cookie) and hmac.compare_digest(self._tag(b"login", nonce.encode()), tag)


@functools.cache
def _dummy() -> str:
    return hash_password("not a password", salt=b"loyalcast-dummy!")
