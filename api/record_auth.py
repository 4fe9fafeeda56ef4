"""The patient's authorisation to feed their medical record: OAuth 2.0 authorization code
with PKCE (RFC 7636) and OpenID Connect against the record's authorisation server.

The patient starts the link in the app (``begin``: we answer the record's sign-in URL), signs
in at the record, and the record sends their browser back to our redirect URI with a code
(``complete``: we exchange it, with our client secret and the PKCE verifier, for tokens and
an ID token). The person identifier the record uses in every request (the oid/IDPE pair) is
read from that ID token, never typed by the patient. Tokens are refreshed before they expire
and revoked (RFC 7009) when the patient unlinks or is erased.

Errors::

    RecordAuthError            the record's authorisation server failed us (retry later)
    +-- RelinkNeeded           the authorisation is gone: the patient must link again
    +-- LinkRefused            a sign-in that cannot complete (bad state, code, ID token)
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from api.id_tokens import IdTokenVerifier, ProviderUnavailable, TokenRefused
from storage.record_links import Person, RecordLinks, Tokens

log = logging.getLogger(__name__)

REFRESH_MARGIN = dt.timedelta(seconds=120)  # refresh an access token this long before expiry
# The ID token claims that carry the person identifier the record binds to the
# authorisation. The guide names the pair (oid, IDPE) but not the claims; these are ours,
# configurable if the record's registration says otherwise.
IDPE_CLAIM = "idpe"
IDPE_OID_CLAIM = "idpe_oid"


class RecordAuthError(Exception):
    """The record's authorisation server did not answer as expected."""


class RelinkNeeded(RecordAuthError):
    """No usable authorisation: never linked, unlinked, or refused by the record."""


class LinkRefused(RecordAuthError):
    """The sign-in at the record cannot complete; the message says why (for the log)."""


@dataclass(frozen=True)
class RecordAuthConfig:
    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str
    scope: str = "openid"
    idpe_claim: str = IDPE_CLAIM
    idpe_oid_claim: str = IDPE_OID_CLAIM
    timeout_s: float = 10.0


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class RecordAccount:
    """Links, tokens and revocation for every patient, over one HTTP session."""

    def __init__(self, config: RecordAuthConfig, links: RecordLinks,
                 session: aiohttp.ClientSession) -> None:
        self.config = config
        self.links = links
        self._session = session
        self._id_tokens = IdTokenVerifier(config.issuer, config.client_id, session,
                                          config.timeout_s)

    async def begin(self, patient_id: uuid.UUID) -> str:
        """The URL where the patient signs in at the record to authorise us."""
        meta = await self._meta()
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier, challenge = pkce_pair()
        await self.links.begin(patient_id, state, verifier, nonce)
        query = urlencode({"response_type": "code", "client_id": self.config.client_id,
                           "redirect_uri": self.config.redirect_uri,
                           "scope": self.config.scope, "state": state, "nonce": nonce,
                           "code_challenge": challenge, "code_challenge_method": "S256"})
        return f"{meta['authorization_endpoint']}?{query}"

    async def complete(self, state: str, code: str) -> uuid.UUID:
        """Finish a sign-in from the record's redirect; returns the patient now linked.
        Raises LinkRefused for an unknown, used or expired state or a bad ID token."""
        pending = await self.links.take_pending(state)
        if pending is None:
            raise LinkRefused("unknown, used or expired state")
        body = await self._token({"grant_type": "authorization_code", "code": code,
                                  "redirect_uri": self.config.redirect_uri,
                                  "code_verifier": pending.verifier})
        if not body.get("id_token"):
            raise LinkRefused("the token answer has no ID token")
        person = await self._person(str(body["id_token"]), pending.nonce)
        await self.links.save(pending.patient_id, _tokens(body, None, person))
        return pending.patient_id

    async def access_token(self, patient_id: uuid.UUID, *, force_refresh: bool = False
                           ) -> tuple[str, Person]:
        """A current access token and the person it speaks for, refreshed first when it
        expires within REFRESH_MARGIN (or when ``force_refresh``: the record said 401).
        Raises RelinkNeeded when there is no usable link, RecordAuthError when the record's
        server cannot be reached."""
        link = await self.links.get(patient_id)
        if link is None or link.state != "linked":
            raise RelinkNeeded("no usable link to the medical record")
        tokens = link.tokens
        if force_refresh or tokens.expires_at - REFRESH_MARGIN <= dt.datetime.now(dt.UTC):
            if not tokens.refresh_token:
                await self.links.mark_relink(patient_id)
                raise RelinkNeeded("the access token expired and there is no refresh token")
            try:
                body = await self._token({"grant_type": "refresh_token",
                                          "refresh_token": tokens.refresh_token})
            except LinkRefused:  # invalid_grant: the record revoked or expired it
                await self.links.mark_relink(patient_id)
                raise RelinkNeeded("the record refused our refresh token") from None
            tokens = _tokens(body, tokens.refresh_token, tokens.person)
            await self.links.save(patient_id, tokens)
        return tokens.access_token, tokens.person

    async def person(self, patient_id: uuid.UUID) -> Person | None:
        link = await self.links.get(patient_id)
        return link.tokens.person if link is not None else None

    async def mark_relink(self, patient_id: uuid.UUID) -> None:
        await self.links.mark_relink(patient_id)

    async def unlink(self, patient_id: uuid.UUID) -> bool:
        """Forget the link and revoke its tokens at the record; True if there was one. A
        revocation the record does not acknowledge is logged: the tokens are gone here."""
        tokens = await self.links.remove(patient_id)
        if tokens is None:
            return False
        for token, hint in ((tokens.refresh_token, "refresh_token"),
                            (tokens.access_token, "access_token")):
            if token:
                try:
                    await self._revoke(token, hint)
                except RecordAuthError as exc:
                    log.warning("record link of %s: revocation not confirmed (%s)",
                                patient_id, exc)
        return True

    async def _meta(self) -> dict[str, Any]:
        try:
            return await self._id_tokens.discovery()
        except ProviderUnavailable as exc:
            raise RecordAuthError(str(exc)) from None

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.config.timeout_s)

    def _client_auth(self) -> dict[str, str]:
        """client_secret_basic (RFC 6749 2.3.1: each part form-encoded first)."""
        pair = f"{quote(self.config.client_id, safe='')}:" \
               f"{quote(self.config.client_secret, safe='')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}

    async def _token(self, form: dict[str, str]) -> dict[str, Any]:
        """A token endpoint call; LinkRefused on invalid_grant, RecordAuthError else."""
        meta = await self._meta()
        try:
            async with self._session.post(meta["token_endpoint"], data=form,
                                          headers=self._client_auth(),
                                          timeout=self._timeout()) as resp:
                body: dict[str, Any] = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RecordAuthError(f"token endpoint: {exc!r}") from None
        if status == 400 and body.get("error") == "invalid_grant":
            raise LinkRefused("invalid_grant")
        if status != 200 or not body.get("access_token"):
            raise RecordAuthError(f"token endpoint answered {status} {body.get('error')}")
        return body

    async def _revoke(self, token: str, hint: str) -> None:
        meta = await self._meta()
        endpoint = meta.get("revocation_endpoint")
        if not endpoint:
            raise RecordAuthError("the record publishes no revocation endpoint")
        try:
            async with self._session.post(endpoint, data={"token": token,
                                                          "token_type_hint": hint},
                                          headers=self._client_auth(),
                                          timeout=self._timeout()) as resp:
                if resp.status != 200:
                    raise RecordAuthError(f"revocation answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RecordAuthError(f"revocation: {exc!r}") from None

    async def _person(self, id_token: str, nonce: str) -> Person:
        try:
            claims = await self._id_tokens.verify(id_token)
        except TokenRefused as exc:
            raise LinkRefused(f"ID token: {exc}") from None
        except ProviderUnavailable as exc:
            raise RecordAuthError(str(exc)) from None
        if not secrets.compare_digest(str(claims["nonce"]), nonce):
            raise LinkRefused("ID token nonce does not match the request")
        oid, value = claims.get(self.config.idpe_oid_claim), claims.get(self.config.idpe_claim)
        if not (isinstance(oid, str) and isinstance(value, str) and oid and value):
            raise LinkRefused("the ID token carries no person identifier")
        return Person(oid.removeprefix("urn:oid:"), value)


def _tokens(body: dict[str, Any], previous_refresh: str | None, person: Person) -> Tokens:
    expires_in = float(body.get("expires_in", 300))
    return Tokens(str(body["access_token"]), body.get("refresh_token") or previous_refresh,
                  dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in), person)
