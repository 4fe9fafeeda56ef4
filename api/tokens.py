"""ES256 access tokens: issued at login, verified on every request (RFC 8725 habits).

The algorithm is pinned, keys come only from configuration (``jku``/``x5u``/``jwk`` headers
are never followed), every registered claim is required, and ``typ`` is checked.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ACCESS_TTL_S = 15 * 60  # CNIL/ASVS inactivity limit for access to health data
TOKEN_TYPE = "at+jwt"  # noqa: S105 (a JWT type, not a password; RFC 9068)
_REQUIRED = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]


class TokenError(Exception):
    """The token is missing, malformed, forged or expired: the client must authenticate."""


@dataclass(frozen=True, slots=True)
class Claims:
    subject: str
    second_factor: bool
    token_id: str
    session_id: str | None = None  # sid: the token dies with its session (logout, reuse)


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The RFC 7638 thumbprint of the key: the ``kid`` of our tokens."""
    jwk = json.loads(ECAlgorithm.to_jwk(public_key))
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return jwt.utils.base64url_encode(hashlib.sha256(canonical).digest()).decode()


class TokenService:
    """Signs with one ES256 key; verifies with it and the ``other_keys``, all published in
    the JWKS under their ``kid``. Rotation without a sign-out: publish the next key as an
    other key first (clients and replicas learn it), then sign with it while the previous
    key stays an other key for one access-token lifetime, then drop it."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, *, issuer: str,
                 audience: str, other_keys: Sequence[ec.EllipticCurvePublicKey] = ()) -> None:
        self._private = private_key
        self._public = private_key.public_key()
        self.kid = key_id(self._public)
        self._verifying = {self.kid: self._public} | {key_id(k): k for k in other_keys}
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ACCESS_TTL_S

    def issue(self, subject: str, *, methods: list[str], now: float | None = None,
              session_id: str | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "sub": subject,
                                  "iat": issued, "nbf": issued, "exp": issued + self.ttl_s,
                                  "jti": str(uuid.uuid4()), "amr": methods}
        if session_id is not None:
            claims["sid"] = session_id
        return jwt.encode(claims, self._private, algorithm="ES256",
                          headers={"kid": self.kid, "typ": TOKEN_TYPE})

    def verify(self, token: str) -> Claims:
        """Verify a token; raises TokenError for anything short of a valid, current token."""
        try:
            header = jwt.get_unverified_header(token)
            key = self._verifying.get(str(header.get("kid")))
            if header.get("typ") != TOKEN_TYPE or key is None:
                raise TokenError("unknown token type or key")
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=["ES256"], audience=self.audience,
                issuer=self.issuer, options={"require": _REQUIRED}, leeway=5)
        except jwt.PyJWTError as exc:
            raise TokenError(str(exc)) from None
        methods = claims.get("amr")
        if not isinstance(methods, list):
            raise TokenError("token has no authentication methods")
        # A second factor: our own TOTP, or multi-factor sign-in at an identity provider.
        second = "otp" in methods or "mfa" in methods
        sid = claims.get("sid")
        return Claims(str(claims["sub"]), second, str(claims["jti"]),
                      str(sid) if sid is not None else None)

    def jwks(self) -> dict[str, Any]:
        """Every key a valid token may name: the signing key first."""
        keys = []
        for kid, public in self._verifying.items():
            jwk = json.loads(ECAlgorithm.to_jwk(public))
            jwk.update({"kid": kid, "use": "sig", "alg": "ES256"})
            keys.append(jwk)
        return {"keys": keys}
