"""Signed links members follow: unsubscribe, preferences, Telegram opt-in.

A link carries a token that names the member (and, for an unsubscribe, the channel and
category of the message it came in) and an HMAC-SHA256 tag over that, cut to 128 bits.
Nothing else authenticates a member on these pages, so nothing is accepted unsigned:

- keys come from the environment (``[web] key_env``), at least :data:`MIN_KEY_BYTES`
  bytes; during a rotation the previous key (``[web] previous_key_env``) still verifies
  links already sent, and only the current one signs;
- the embedded default may name ``[web] key_file`` instead: when the variable is unset,
  a random key is created there once (mode 0600) and kept, so ``make demo`` and
  ``loyalcast serve`` agree without setup.

The token is ``base64url(payload) + base64url(tag)`` with no separator (the tag is the
last :data:`TAG_CHARS` characters), so it fits Telegram's ``/start`` parameter (at most
64 characters of ``A-Za-z0-9_-``). Payloads are ``<purpose><member id>[.<channel>.<category>]``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from campaigns.errors import ConfigError, InvalidLink

MIN_KEY_BYTES = 32
TAG_BYTES = 16
TAG_CHARS = 22  # base64url of 16 bytes, unpadded
UNSUBSCRIBE = "u"
TELEGRAM_START = "t"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{24,200}")
_PAYLOAD = re.compile(
    r"(?P<purpose>[ut])(?P<member>-?(?:0|[1-9][0-9]{0,18}))"
    r"(?:\.(?P<channel>[a-z*]{1,16})\.(?P<category>[A-Za-z0-9_*]{1,50}))?"
)


@dataclass(frozen=True)
class LinkClaim:
    """What a verified token says: whose link it is, and for which message kind."""

    purpose: str
    member_id: int
    channel: str | None = None
    category: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    """Signs with ``current``; verifies with ``current`` or ``previous``."""

    def __init__(self, current: bytes, previous: bytes | None = None) -> None:
        for name, key in (("current", current), ("previous", previous)):
            if key is not None and len(key) < MIN_KEY_BYTES:
                raise ValueError(f"the {name} link key has {len(key)} bytes; at least {MIN_KEY_BYTES} are needed")
        self._keys = [current] + ([previous] if previous else [])

    @property
    def key(self) -> bytes:
        """The current key, for deriving keys of other purposes (the console's sessions)
        by HMAC under a label of their own; never used as it is outside this class."""
        return self._keys[0]

    @staticmethod
    def _tag(key: bytes, payload: bytes) -> bytes:
        return hmac.new(key, b"loyalcast-link:" + payload, hashlib.sha256).digest()[:TAG_BYTES]

    def sign(self, purpose: str, member_id: int, channel: str | None = None, category: str | None = None) -> str:
        text = f"{purpose}{member_id}" + (f".{channel}.{category}" if channel is not None else "")
        if not _PAYLOAD.fullmatch(text):
            raise ValueError(f"cannot sign {text!r}")
        payload = text.encode("ascii")
        return _b64(payload) + _b64(self._tag(self._keys[0], payload))

    def verify(self, token: str, purpose: str) -> LinkClaim:
        """The claim ``token`` carries; InvalidLink when it is malformed, altered,
        truncated, signed by a key no longer accepted, or made for another purpose."""
        if not _TOKEN.fullmatch(token):
            raise InvalidLink("the link is incomplete or malformed")
        try:
            payload, tag = _unb64(token[:-TAG_CHARS]), _unb64(token[-TAG_CHARS:])
        except (binascii.Error, ValueError):
            raise InvalidLink("the link is incomplete or malformed") from None
        if not any(hmac.compare_digest(self._tag(key, payload), tag) for key in self._keys):
            raise InvalidLink("the link's signature does not match (altered, truncated, or from an old key)")
        match = _PAYLOAD.fullmatch(payload.decode("ascii", "replace"))
        if match is None or match["purpose"] != purpose:
            raise InvalidLink("the link was made for something else")
        return LinkClaim(purpose, int(match["member"]), match["channel"], match["category"])


def load_signer(key_env: str, previous_key_env: str | None, key_file: Path | None) -> LinkSigner:
    """The signer from the environment, else from (or into) ``key_file``; ConfigError
    naming the ``[web]`` key when neither gives a key of at least 32 bytes."""
    current = os.environ.get(key_env, "").encode()
    if not current and key_file is not None:
        current = _key_from_file(key_file)
    if not current:
        raise ConfigError(
            [
                f"web.key_env: environment variable {key_env} is not set (a key of at least {MIN_KEY_BYTES} bytes signs "
                "unsubscribe and opt-in links; make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            ]
        )
    previous = os.environ.get(previous_key_env, "").encode() if previous_key_env else b""
    for key, where, name in ((current, "web.key_env", key_env), (previous, "web.previous_key_env", previous_key_env)):
        if key and len(key) < MIN_KEY_BYTES:
            raise ConfigError([f"{where}: {name} holds {len(key)} bytes; a link key needs at least {MIN_KEY_BYTES}"])
    return LinkSigner(current, previous or None)


def _key_from_file(path: Path) -> bytes:
    """The key kept in ``path``, created there first if missing. Workers starting together
    race to create it: the key is written to a file of its own and linked into place,
    so the file appears whole and once, and every process reads the same key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, draft = tempfile.mkstemp(prefix=".link-key-", dir=path.parent)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(MIN_KEY_BYTES) + "\n")
            os.chmod(draft, 0o600)
            try:
                os.link(draft, path)
            except FileExistsError:  # another process linked its key first: use that one
                pass
        finally:
            os.unlink(draft)
    return path.read_text().strip().encode()
