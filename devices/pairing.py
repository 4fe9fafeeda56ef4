"""Pairing codes: what a device shows so that its owner can claim it.

A code is 10 characters of Crockford's base32 (50 random bits), shown as ``K7QX2-9M4TD``.
The registry keeps only a salted scrypt hash: a database dump does not give the codes away,
and 50 bits against scrypt makes an offline search pointless. Online guessing is limited by
the registry (wrong attempts per patient and per device over a window).

Validity: single use, and valid until the device is paired or PAIRING_CODE_VALIDITY after
provisioning, whichever comes first. The code is written at the factory, so the backend
cannot know when a device first shows it; a validity "10 minutes after it is shown" would
need the device to announce that over MQTT. The entropy plus the attempt limits are what
make a long validity safe.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets

PAIRING_CODE_VALIDITY = dt.timedelta(days=365)  # as long as the first device certificate
CODE_LENGTH = 10
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
_CONFUSABLE = str.maketrans({"O": "0", "I": "1", "L": "1"})
# scrypt at 16 MiB: ~50 ms per check, leaves the event loop (the registry runs it in a thread).
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}
SALT_BYTES = 16


def new_code() -> str:
    """A fresh random code, grouped for reading: ``XXXXX-XXXXX``."""
    raw = "".join(secrets.choice(_ALPHABET) for _ in range(CODE_LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


def normalise(code: str) -> str | None:
    """The canonical form of what a person typed (case, dashes, spaces and look-alike
    letters forgiven), or None when it cannot be a code."""
    cleaned = code.upper().replace("-", "").replace(" ", "").translate(_CONFUSABLE)
    if len(cleaned) != CODE_LENGTH or any(c not in _ALPHABET for c in cleaned):
        return None
    return cleaned


def hash_code(code: str, salt: bytes) -> bytes:
    """scrypt of the normalised code; ValueError if ``code`` is not a code at all."""
    canonical = normalise(code)
    if canonical is None:
        raise ValueError("not a pairing code")
    return hashlib.scrypt(canonical.encode(), salt=salt, **_SCRYPT)


def matches(code: str, salt: bytes, stored: bytes) -> bool:
    """True when ``code`` is the one hashed into ``stored`` (constant-time comparison)."""
    try:
        return hmac.compare_digest(hash_code(code, salt), stored)
    except ValueError:
        return False
