"""RFC 6238 time-based one-time codes (SHA-1, 6 digits, 30 s), as authenticator apps use."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from urllib.parse import quote, urlencode

STEP_S = 30
DIGITS = 6
DRIFT_STEPS = 1  # accept the previous and next code: phone clocks drift a little


def new_secret() -> bytes:
    return secrets.token_bytes(20)  # 160 bits, the size RFC 4226 recommends


def secret_base32(secret: bytes) -> str:
    """The form authenticator apps take (otpauth:// URIs, manual entry)."""
    return base64.b32encode(secret).decode().rstrip("=")


def secret_from_base32(text: str) -> bytes:
    """The inverse of ``secret_base32`` (which drops the padding, as apps expect)."""
    return base64.b32decode(text + "=" * (-len(text) % 8))


def code_at(secret: bytes, counter: int) -> str:
    digest = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**DIGITS).zfill(DIGITS)


def now_code(secret: bytes, now: float | None = None) -> str:
    return code_at(secret, int((time.time() if now is None else now) // STEP_S))


def verify(secret: bytes, code: str, now: float | None = None) -> int | None:
    """The time step ``code`` matches (within the drift), or None. Callers refuse a step
    at or below the last one accepted, which makes each code single-use."""
    # isdigit() alone admits non-ASCII digits, which compare_digest refuses with TypeError.
    if len(code) != DIGITS or not (code.isascii() and code.isdigit()):
        return None
    step = int((time.time() if now is None else now) // STEP_S)
    for counter in range(step - DRIFT_STEPS, step + DRIFT_STEPS + 1):
        if hmac.compare_digest(code_at(secret, counter), code):
            return counter
    return None


def provisioning_uri(secret_b32: str, account: str, issuer: str) -> str:
    """The otpauth:// URI an authenticator app scans as a QR code."""
    label = quote(f"{issuer}:{account}")
    query = urlencode({"secret": secret_b32, "issuer": issuer, "algorithm": "SHA1",
                       "digits": DIGITS, "period": STEP_S})
    return f"otpauth://totp/{label}?{query}"
