"""ES256 access tokens: what verifies, and each forgery RFC 8725 warns about refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from api.tokens import ACCESS_TTL_S, TOKEN_TYPE, TokenError, TokenService, key_id

ISSUER = "https://healthiot.test"
AUDIENCE = "healthiot-api"
KEY = ec.generate_private_key(ec.SECP256R1())
ATTACKER_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def service() -> TokenService:
    return TokenService(KEY, issuer=ISSUER, audience=AUDIENCE)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    """Every claim a valid token carries, then ``changes`` (None removes a claim)."""
    now = int(time.time())
    base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "patient-1", "iat": now,
                            "nbf": now, "exp": now + 600, "jti": str(uuid.uuid4()),
                            "amr": ["pwd", "otp"]}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def signed(service: TokenService, key: ec.EllipticCurvePrivateKey = KEY,
           headers: dict[str, Any] | None = None, **changes: Any) -> str:
    """A token signed with ``key``, with our kid and typ unless ``headers`` say otherwise."""
    header = {"kid": service.kid, "typ": TOKEN_TYPE, **(headers or {})}
    return jwt.encode(claims(**changes), key, algorithm="ES256", headers=header)


def hand_made(header: dict[str, Any], payload: dict[str, Any], sign: Any) -> str:
    signing_input = (b64url(json.dumps(header).encode()) + "." +
                     b64url(json.dumps(payload).encode()))
    return signing_input + "." + b64url(sign(signing_input.encode()))


def refused(service: TokenService, token: str) -> None:
    with pytest.raises(TokenError):
        service.verify(token)


# --- valid tokens ------------------------------------------------------------------------


def test_issued_token_with_otp_verifies_with_a_second_factor(service: TokenService) -> None:
    token = service.issue("patient-1", methods=["pwd", "otp"])
    got = service.verify(token)
    assert got.subject == "patient-1"
    assert got.second_factor is True
    assert uuid.UUID(got.token_id)


def test_issued_token_without_otp_has_no_second_factor(service: TokenService) -> None:
    assert service.verify(service.issue("patient-1", methods=["pwd"])).second_factor is False


def test_issued_token_carries_the_pinned_header_and_every_required_claim(
        service: TokenService) -> None:
    now = time.time()
    token = service.issue("patient-1", methods=["pwd"], now=now)
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["typ"], header["kid"]) == ("ES256", "at+jwt", service.kid)
    body = jwt.decode(token, options={"verify_signature": False})
    assert {"exp", "iat", "nbf", "iss", "aud", "sub", "jti"} <= body.keys()
    assert body["exp"] - body["iat"] == ACCESS_TTL_S <= 15 * 60


def test_each_token_has_its_own_id(service: TokenService) -> None:
    first = service.verify(service.issue("patient-1", methods=["pwd"]))
    second = service.verify(service.issue("patient-1", methods=["pwd"]))
    assert first.token_id != second.token_id


def test_hand_signed_token_with_our_key_verifies(service: TokenService) -> None:
    # The forgeries below differ from these tokens in one respect each.
    assert service.verify(signed(service)).subject == "patient-1"
    header = {"alg": "ES256", "typ": TOKEN_TYPE, "kid": service.kid}
    assert service.verify(hand_made(header, claims(), _es256(KEY))).second_factor is True


# --- refusals ----------------------------------------------------------------------------


def test_alg_none_token_is_refused(service: TokenService) -> None:
    header = {"alg": "none", "typ": TOKEN_TYPE, "kid": service.kid}
    refused(service, hand_made(header, claims(), lambda _: b""))


def test_hs256_token_signed_with_the_public_key_as_secret_is_refused(
        service: TokenService) -> None:
    public_pem = KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": TOKEN_TYPE, "kid": service.kid}
    token = hand_made(header, claims(),
                      lambda data: hmac.new(public_pem, data, hashlib.sha256).digest())
    refused(service, token)


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"])
def test_token_missing_a_required_claim_is_refused(service: TokenService, claim: str) -> None:
    refused(service, signed(service, **{claim: None}))


def test_token_without_authentication_methods_is_refused(service: TokenService) -> None:
    refused(service, signed(service, amr=None))
    refused(service, signed(service, amr="otp"))


def test_token_for_another_audience_is_refused(service: TokenService) -> None:
    refused(service, signed(service, aud="another-api"))


def test_token_from_another_issuer_is_refused(service: TokenService) -> None:
    refused(service, signed(service, iss="https://attacker.test"))


def test_expired_token_is_refused(service: TokenService) -> None:
    refused(service, service.issue("patient-1", methods=["pwd", "otp"],
                                   now=time.time() - ACCESS_TTL_S - 60))


def test_token_not_yet_valid_is_refused(service: TokenService) -> None:
    now = int(time.time())
    refused(service, signed(service, iat=now + 600, nbf=now + 600, exp=now + 1200))


@pytest.mark.parametrize("typ", ["JWT", "jwt", "id_token+jwt", None])
def test_token_with_another_typ_header_is_refused(service: TokenService,
                                                  typ: str | None) -> None:
    # Hand-signed with our key: PyJWT would add typ=JWT to a header without one.
    header = {"alg": "ES256", "kid": service.kid, **({"typ": typ} if typ else {})}
    refused(service, hand_made(header, claims(), _es256(KEY)))


def test_token_with_an_unknown_kid_is_refused(service: TokenService) -> None:
    refused(service, signed(service, headers={"kid": "another-key"}))


def test_token_signed_by_another_key_with_our_kid_is_refused(service: TokenService) -> None:
    refused(service, signed(service, key=ATTACKER_KEY))


@pytest.mark.parametrize("header", [
    {"jwk": json.loads(ECAlgorithm.to_jwk(ATTACKER_KEY.public_key()))},
    {"jku": "https://attacker.test/jwks.json"},
    {"x5u": "https://attacker.test/cert.pem"},
    {"jwk": json.loads(ECAlgorithm.to_jwk(ATTACKER_KEY.public_key())),
     "jku": "https://attacker.test/jwks.json"},
])
def test_key_named_in_the_token_header_is_never_used(service: TokenService,
                                                     header: dict[str, Any]) -> None:
    refused(service, signed(service, key=ATTACKER_KEY, headers=header))


def test_tampered_payload_is_refused(service: TokenService) -> None:
    token = service.issue("patient-1", methods=["pwd"])
    head, _, signature = token.split(".")
    forged = b64url(json.dumps(claims(sub="patient-2")).encode())
    refused(service, f"{head}.{forged}.{signature}")


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b", "...", "e30.e30.",
                                   b64url(b"[1]") + ".e30.AAAA"])
def test_malformed_token_is_refused(service: TokenService, token: str) -> None:
    refused(service, token)


def test_token_issued_by_another_service_instance_with_another_key_is_refused(
        service: TokenService) -> None:
    other = TokenService(ATTACKER_KEY, issuer=ISSUER, audience=AUDIENCE)
    refused(service, other.issue("patient-1", methods=["pwd", "otp"]))


# --- published keys ----------------------------------------------------------------------


def test_jwks_publishes_our_public_key_under_our_kid(service: TokenService) -> None:
    keys = service.jwks()["keys"]
    assert [k["kid"] for k in keys] == [service.kid]
    published = keys[0]
    assert (published["kty"], published["crv"], published["alg"], published["use"]) == (
        "EC", "P-256", "ES256", "sig")
    assert "d" not in published  # never the private part
    public = ECAlgorithm.from_jwk(json.dumps(published))
    token = service.issue("patient-1", methods=["pwd"])
    assert jwt.decode(token, public, algorithms=["ES256"], audience=AUDIENCE)["sub"] == (
        "patient-1")


def test_kid_is_the_rfc7638_thumbprint_of_the_public_key(service: TokenService) -> None:
    jwk = json.loads(ECAlgorithm.to_jwk(KEY.public_key()))
    # RFC 7638 section 3: required members only, lexicographic order, no whitespace.
    canonical = f'{{"crv":"{jwk["crv"]}","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'
    assert service.kid == b64url(hashlib.sha256(canonical.encode()).digest())
    assert key_id(ATTACKER_KEY.public_key()) != service.kid


def _es256(key: ec.EllipticCurvePrivateKey) -> Any:
    algorithm = jwt.get_algorithm_by_name("ES256")
    return lambda data: algorithm.sign(data, key)


# --- rotation by kid -----------------------------------------------------------------------

NEXT_KEY = ec.generate_private_key(ec.SECP256R1())


def test_rotation_by_kid_keeps_every_valid_token_valid_and_then_retires_the_old_key() -> None:
    # 1. The next key is published before it signs anything: replicas and clients learn it.
    before = TokenService(KEY, issuer=ISSUER, audience=AUDIENCE,
                          other_keys=[NEXT_KEY.public_key()])
    assert [k["kid"] for k in before.jwks()["keys"]] == [key_id(KEY.public_key()),
                                                          key_id(NEXT_KEY.public_key())]
    old_token = before.issue("patient-1", methods=["pwd", "otp"])
    # 2. The switch: the next key signs, the previous one still verifies for a token's life.
    during = TokenService(NEXT_KEY, issuer=ISSUER, audience=AUDIENCE,
                          other_keys=[KEY.public_key()])
    new_token = during.issue("patient-1", methods=["pwd", "otp"])
    assert during.verify(old_token).subject == "patient-1"
    assert before.verify(new_token).subject == "patient-1"  # a replica not yet switched
    assert jwt.get_unverified_header(new_token)["kid"] == key_id(NEXT_KEY.public_key())
    # 3. The previous key retired: its tokens stop, the new ones go on.
    after = TokenService(NEXT_KEY, issuer=ISSUER, audience=AUDIENCE)
    assert after.verify(new_token).subject == "patient-1"
    refused(after, old_token)
    assert [k["kid"] for k in after.jwks()["keys"]] == [after.kid]


def test_a_published_key_verifies_only_tokens_naming_its_own_kid() -> None:
    service = TokenService(KEY, issuer=ISSUER, audience=AUDIENCE,
                           other_keys=[NEXT_KEY.public_key()])
    # Signed by the next key but claiming the current kid: the kid picks the key, so no.
    token = jwt.encode(claims(), NEXT_KEY, algorithm="ES256",
                       headers={"kid": service.kid, "typ": TOKEN_TYPE})
    refused(service, token)
    refused(service, signed(service, ATTACKER_KEY,
                            headers={"kid": key_id(ATTACKER_KEY.public_key())}))
