"""OpenID Connect ID tokens of one provider: its discovery document, its published keys and
the checks every ID token must pass before a claim is read.

Used for clinicians (Pro Santé Connect, api/oidc.py) and for the patient's medical record
(api/record_auth.py); each reads its own claims from what ``verify`` returns.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jwt

ALGORITHMS = ["ES256", "RS256"]  # pinned: never "none", never a MAC with a public key
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "nonce"]
DISCOVERY_TTL_S = 3600.0
JWKS_TTL_S = 600.0
REFRESH_AT_MOST_EVERY_S = 60.0  # an unknown kid refetches the keys, but not in a loop


class ProviderUnavailable(Exception):
    """The provider could not be reached or answered wrongly (retry later)."""


class TokenRefused(Exception):
    """The ID token cannot be accepted; the message says why (for the log, not the user)."""


class IdTokenVerifier:
    def __init__(self, issuer: str, client_id: str, session: aiohttp.ClientSession,
                 timeout_s: float = 10.0) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._discovery: dict[str, Any] = {}
        self._discovered_at = -DISCOVERY_TTL_S
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_at = -JWKS_TTL_S

    async def get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._session.get(url, timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise ProviderUnavailable(f"{url} answered {resp.status}")
                body: dict[str, Any] = await resp.json(content_type=None)
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderUnavailable(f"{url}: {exc!r}") from None

    async def discovery(self) -> dict[str, Any]:
        """The provider's metadata, which must name the issuer we trust."""
        if time.monotonic() - self._discovered_at > DISCOVERY_TTL_S:
            meta = await self.get_json(
                self.issuer.rstrip("/") + "/.well-known/openid-configuration")
            if meta.get("issuer") != self.issuer:
                raise ProviderUnavailable("the discovery document names another issuer")
            self._discovery, self._discovered_at = meta, time.monotonic()
        return self._discovery

    async def _key(self, kid: str) -> jwt.PyJWK:
        age = time.monotonic() - self._keys_at
        if age > JWKS_TTL_S or (kid not in self._keys and age > REFRESH_AT_MOST_EVERY_S):
            jwks_uri = (await self.discovery()).get("jwks_uri")
            if not jwks_uri:
                raise ProviderUnavailable("the discovery document names no jwks_uri")
            jwks = await self.get_json(str(jwks_uri))
            self._keys = {k["kid"]: jwt.PyJWK(k) for k in jwks.get("keys", [])
                          if "kid" in k and k.get("use", "sig") == "sig"}
            self._keys_at = time.monotonic()
        key = self._keys.get(kid)
        if key is None:
            raise TokenRefused("the token is signed by a key the provider does not publish")
        return key

    async def verify(self, id_token: str) -> dict[str, Any]:
        """The claims of a token signed by the provider for us, current, with a string
        nonce (which the caller compares or spends)."""
        try:
            header = jwt.get_unverified_header(id_token)
            if header.get("alg") not in ALGORITHMS:
                raise TokenRefused(f"algorithm {header.get('alg')!r} is not accepted")
            key = await self._key(str(header.get("kid")))
            claims: dict[str, Any] = jwt.decode(
                id_token, key, algorithms=ALGORITHMS, audience=self.client_id,
                issuer=self.issuer, leeway=5, options={"require": REQUIRED_CLAIMS})
        except (jwt.PyJWTError, KeyError, ValueError) as exc:
            raise TokenRefused(str(exc)) from None
        if not isinstance(claims["nonce"], str):
            raise TokenRefused("the nonce is not a string")
        return claims
