"""The SCRAM verifier the service role's password is set as (storage/roles.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from storage.errors import MigrationError
from storage.roles import scram_verifier, set_password


def test_the_verifier_matches_the_rfc_7677_example() -> None:
    # RFC 7677, section 3: user "user", password "pencil"; the server's signature over the
    # exchange proves the server key, the client's proof the stored key.
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_verifier("pencil", salt=salt, iterations=4096)
    method, rest = verifier.split("$", 1)
    params, keys = rest.split("$")
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    auth = (b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,"
            b"i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    assert (method, params) == ("SCRAM-SHA-256", "4096:W22ZaJ0SNY7soEsUEjb6gQ==")
    assert base64.b64encode(hmac.digest(server_key, auth, "sha256")) == \
        b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_key = bytes(a ^ b for a, b in zip(proof, hmac.digest(stored_key, auth, "sha256"),
                                             strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key


@pytest.mark.parametrize("password", ["", "mot de passe\n", "pässword"])
async def test_a_password_clients_would_hash_otherwise_is_refused(password: str) -> None:
    with pytest.raises(MigrationError):
        await set_password(None, "healthiot_service", password)  # type: ignore[arg-type]
