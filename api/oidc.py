"""Clinician sign-in through an OpenID Connect provider shaped like Pro Santé Connect.

The app obtains an ID token from the provider; the API verifies it (issuer, audience,
expiry, signature by a key of the provider's published JWKS, an accepted ``acr``) and reads
the professional identity from it: the national identifier ``SubjectNameID`` ("8" followed
by the RPPS number) and the profession code of the practice (``SubjectRefPro``).

The token must carry a ``nonce``: the app asks the API for one (POST
/v1/clinicians/oidc/nonce) and sends it in its authorisation request; the sign-in route
spends it (storage/nonces.py), so a captured ID token cannot be replayed while it is valid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

ALGORITHMS = ["RS256", "ES256"]  # pinned: never "none", never a MAC with a public key
JWKS_TTL_S = 600.0
REFRESH_AT_MOST_EVERY_S = 60.0  # an unknown kid refetches the JWKS, but not in a loop

# Professions of the French health-professional directory (code -> our name); only these,
# bound by medical secrecy, can sign in.
PROFESSION_CODES = {"10": "physician", "21": "pharmacist", "40": "dentist", "50": "midwife",
                    "60": "nurse", "70": "physiotherapist"}


class OidcError(Exception):
    """The ID token cannot be accepted; the message says why (for the log, not the user)."""


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    accepted_acr: tuple[str, ...] = ("eidas1", "eidas2", "eidas3")


@dataclass(frozen=True, slots=True)
class ProIdentity:
    subject: str
    rpps: str
    profession: str
    display_name: str
    nonce: str  # to be spent by the caller: single use is checked there, not here


class OidcVerifier:
    def __init__(self, config: OidcConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self._session = session
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -JWKS_TTL_S

    async def _get_json(self, url: str) -> dict[str, Any]:
        async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status != 200:
                raise OidcError(f"{url} answered {resp.status}")
            body: dict[str, Any] = await resp.json(content_type=None)
            return body

    async def _refresh(self) -> None:
        discovery = await self._get_json(
            self.config.issuer.rstrip("/") + "/.well-known/openid-configuration")
        if discovery.get("issuer") != self.config.issuer:
            raise OidcError("the discovery document names another issuer")
        keys = await self._get_json(str(discovery["jwks_uri"]))
        self._keys = {k["kid"]: jwt.PyJWK(k) for k in keys.get("keys", [])
                      if "kid" in k and k.get("use", "sig") == "sig"}
        self._fetched_at = time.monotonic()

    async def _key(self, kid: str) -> jwt.PyJWK:
        age = time.monotonic() - self._fetched_at
        if age > JWKS_TTL_S or (kid not in self._keys and age > REFRESH_AT_MOST_EVERY_S):
            await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            raise OidcError("the token is signed by a key the provider does not publish")
        return key

    async def verify(self, id_token: str) -> ProIdentity:
        try:
            header = jwt.get_unverified_header(id_token)
            if header.get("alg") not in ALGORITHMS:
                raise OidcError(f"algorithm {header.get('alg')!r} is not accepted")
            key = await self._key(str(header.get("kid")))
            claims: dict[str, Any] = jwt.decode(
                id_token, key, algorithms=ALGORITHMS, audience=self.config.client_id,
                issuer=self.config.issuer, leeway=5,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "nonce"]})
        except (jwt.PyJWTError, aiohttp.ClientError, KeyError, ValueError) as exc:
            raise OidcError(str(exc)) from None
        if claims.get("acr") not in self.config.accepted_acr:
            raise OidcError(f"authentication level {claims.get('acr')!r} is not accepted")
        if not isinstance(claims["nonce"], str):
            raise OidcError("the nonce is not a string")
        return _identity(claims)


def _identity(claims: dict[str, Any]) -> ProIdentity:
    national = str(claims.get("SubjectNameID", ""))
    rpps = national[1:] if len(national) == 12 and national.startswith("8") else national
    practices = (claims.get("SubjectRefPro") or {}).get("exercices") or []
    codes = [str(p.get("codeProfession")) for p in practices if isinstance(p, dict)]
    profession = next((PROFESSION_CODES[c] for c in codes if c in PROFESSION_CODES), None)
    if profession is None:
        raise OidcError("no practice of a profession bound by medical secrecy")
    name = " ".join(str(claims[k]) for k in ("given_name", "family_name") if claims.get(k))
    return ProIdentity(str(claims["sub"]), rpps, profession, name or rpps, claims["nonce"])
