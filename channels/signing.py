"""DKIM signatures (RFC 6376) on outgoing email, with dkimpy.

The SMTP transport signs each message it sends when ``dkim_selector`` and
``dkim_private_key_env`` are set: the private key (PEM, RSA) comes from the environment,
the public key is published by the operator as ``<selector>._domainkey.<domain>`` TXT.

So that the signature survives relays: the body is written 7-bit (quoted-printable; a
relay without 8BITMIME would otherwise convert an 8bit body and break the body hash),
and both headers and body are canonicalized ``relaxed`` (a relay that refolds a header
or changes trailing whitespace keeps it valid). The signed headers include
``List-Unsubscribe`` and ``List-Unsubscribe-Post``, which RFC 8058 requires a valid
signature to cover before mailbox providers honour one-click unsubscribe.
"""

from __future__ import annotations

import dkim
import dkim.crypto

SIGNED_HEADERS = (
    b"From",
    b"To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"MIME-Version",
    b"Content-Type",
    b"Content-Transfer-Encoding",
    b"List-Unsubscribe",
    b"List-Unsubscribe-Post",
)
"""Headers the signature covers (those a message lacks are skipped by dkimpy)."""


class DkimKeyError(ValueError):
    """The private key is not a PEM RSA key dkimpy can sign with."""


class Signer:
    """Signs messages as ``domain`` with the key published under ``selector``."""

    def __init__(self, domain: str, selector: str, private_key: bytes) -> None:
        try:
            dkim.crypto.parse_pem_private_key(private_key)
        except (dkim.crypto.UnparsableKeyError, ValueError, IndexError) as exc:
            raise DkimKeyError(f"not a PEM RSA private key: {exc}") from None
        self.domain = domain.encode("idna")
        self.selector = selector.encode("ascii")
        self.private_key = private_key

    def sign(self, data: bytes) -> bytes:
        """``data`` (a whole message, CRLF line ends) with its ``DKIM-Signature`` header first."""
        signature: bytes = dkim.sign(
            data,
            self.selector,
            self.domain,
            self.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(SIGNED_HEADERS),
            linesep=b"\r\n",
        )
        return signature + data


def aligned(from_domain: str, signing_domain: str) -> bool:
    """Whether a signature by ``signing_domain`` aligns with the From domain for DMARC
    (relaxed alignment: the same domain or a parent of it)."""
    sender, signer = from_domain.lower().rstrip("."), signing_domain.lower().rstrip(".")
    return sender == signer or sender.endswith("." + signer)
