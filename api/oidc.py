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

from dataclasses import dataclass
from typing import Any

import aiohttp

from api.id_tokens import IdTokenVerifier, ProviderUnavailable, TokenRefused

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
        self._tokens = IdTokenVerifier(config.issuer, config.client_id, session)

    async def verify(self, id_token: str) -> ProIdentity:
        try:
            claims = await self._tokens.verify(id_token)
        except (TokenRefused, ProviderUnavailable) as exc:
            raise OidcError(str(exc)) from None
        if claims.get("acr") not in self.config.accepted_acr:
            raise OidcError(f"authentication level {claims.get('acr')!r} is not accepted")
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
