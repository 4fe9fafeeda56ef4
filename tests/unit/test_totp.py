"""TOTP (RFC 6238): the RFC's own test vectors, the drift window, malformed codes."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import totp

RFC_SECRET = b"12345678901234567890"  # RFC 6238 Appendix B, SHA-1 seed

# RFC 6238 Appendix B, SHA-1 column: (time, 8-digit TOTP). We use 6 digits (DIGITS), and
# both are the same dynamic truncation modulo 10**digits: the last 6 digits of the RFC value.
RFC_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]
NOW = 1_750_000_005.0  # not on a step boundary


@pytest.mark.parametrize(("t", "rfc_code"), RFC_VECTORS)
def test_code_matches_rfc6238_sha1_vector(t: int, rfc_code: str) -> None:
    assert totp.DIGITS == 6
    assert totp.now_code(RFC_SECRET, now=t) == rfc_code[-6:]


@pytest.mark.parametrize(("t", "rfc_code"), RFC_VECTORS)
def test_rfc_vector_verifies_at_its_time_step(t: int, rfc_code: str) -> None:
    assert totp.verify(RFC_SECRET, rfc_code[-6:], now=t) == t // totp.STEP_S


def test_code_keeps_its_leading_zero() -> None:
    code = totp.now_code(RFC_SECRET, now=1111111109)
    assert code == "081804" and len(code) == totp.DIGITS


@pytest.mark.parametrize("drift", [-1, 0, 1])
def test_code_from_the_previous_current_or_next_step_is_accepted(drift: int) -> None:
    step = int(NOW // totp.STEP_S)
    code = totp.code_at(RFC_SECRET, step + drift)
    assert totp.verify(RFC_SECRET, code, now=NOW) == step + drift


@pytest.mark.parametrize("drift", [-3, -2, 2, 3])
def test_code_two_or_more_steps_away_is_refused(drift: int) -> None:
    step = int(NOW // totp.STEP_S)
    code = totp.code_at(RFC_SECRET, step + drift)
    # This fixed secret and time have no accidental collision within the window.
    assert code not in {totp.code_at(RFC_SECRET, step + d) for d in (-1, 0, 1)}
    assert totp.verify(RFC_SECRET, code, now=NOW) is None


def test_code_for_another_secret_is_refused() -> None:
    other = b"abcdefghijabcdefghij"
    code = totp.now_code(other, now=NOW)
    assert code not in {totp.code_at(RFC_SECRET, int(NOW // 30) + d) for d in (-1, 0, 1)}
    assert totp.verify(RFC_SECRET, code, now=NOW) is None


@pytest.mark.parametrize("code", ["", "28708", "2870820", "94287082", "28708a", "abcdef",
                                  " 28708", "287 82", "28708\n", "-28708", "+28708",
                                  "2870.2", "28708½"])
def test_code_that_is_not_six_ascii_digits_is_refused(code: str) -> None:
    assert totp.verify(RFC_SECRET, code, now=59) is None


@pytest.mark.parametrize("code", ["١٢٣٤٥٦", "٢٨٧٠٨٢", "２８７０８２", "²⁸⁷⁰⁸²", "𝟐𝟖𝟕𝟎𝟖𝟐"])
def test_non_ascii_digits_are_refused_not_an_error(code: str) -> None:
    # str.isdigit() is true for these, and hmac.compare_digest raises TypeError for
    # non-ASCII str: a login with such a code must be refused, not answered with a 500.
    assert totp.verify(RFC_SECRET, code, now=59) is None


@settings(database=None, deadline=None, max_examples=300)
@given(st.text(max_size=10))
def test_verify_of_any_text_gives_a_step_or_none(code: str) -> None:
    step = totp.verify(RFC_SECRET, code, now=NOW)
    current = int(NOW // totp.STEP_S)
    assert step is None or (step in range(current - 1, current + 2)
                            and totp.code_at(RFC_SECRET, step) == code)


def test_new_secret_has_160_bits_and_differs_each_time() -> None:
    first, second = totp.new_secret(), totp.new_secret()
    assert len(first) == 20 and first != second


def test_base32_secret_decodes_back_to_the_secret_without_padding() -> None:
    text = totp.secret_base32(RFC_SECRET)
    assert "=" not in text
    assert text == "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # RFC 4648 base32 of the RFC seed
    secret = totp.new_secret()
    encoded = totp.secret_base32(secret)
    assert base64.b32decode(encoded + "=" * (-len(encoded) % 8)) == secret
