"""Password policy (CNIL 2022: 12+ characters, a blocklist, no composition rules), argon2id."""

from __future__ import annotations

import pytest

from api.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    PasswordRefused,
    check_policy,
    hash_password,
    verify_password,
)

GOOD = "correct horse battery staple"


@pytest.fixture(scope="module")
def good_hash() -> str:
    return hash_password(GOOD)  # argon2 is slow on purpose: hash once for the module


def test_minimum_length_is_twelve() -> None:
    assert MIN_LENGTH == 12  # CNIL deliberation 2022-100, password-only authentication


@pytest.mark.parametrize("password", ["Password123!", "PASSWORD123!", "password123!",
                                      "123456789012", "azertyuiop12"])
def test_common_twelve_character_password_is_refused(password: str) -> None:
    assert len(password) == MIN_LENGTH  # long enough: only the blocklist can refuse it
    with pytest.raises(PasswordRefused, match="common"):
        check_policy(password)


def test_common_password_is_refused_by_hash_password_too() -> None:
    with pytest.raises(PasswordRefused):
        hash_password("Password123!")


@pytest.mark.parametrize("password", ["x7#Kq9!mZp2", "", "a", "eleven char"])
def test_password_shorter_than_twelve_characters_is_refused(password: str) -> None:
    assert len(password) < MIN_LENGTH
    with pytest.raises(PasswordRefused, match="12"):
        check_policy(password)


def test_eleven_character_password_is_refused_by_hash_password() -> None:
    with pytest.raises(PasswordRefused):
        hash_password("x7#Kq9!mZp2")


@pytest.mark.parametrize("password", ["x7#Kq9!mZp2w", "all lowercase words",
                                      "ÉtéÀParis2024", "correct horse battery staple" * 2,
                                      ("tortue géniale " * 9)[:MAX_LENGTH]])
def test_uncommon_password_of_twelve_or_more_characters_is_accepted(password: str) -> None:
    # No composition rules (ASVS forbids them); passphrases of 64 characters and more fit.
    check_policy(password)


def test_password_longer_than_the_maximum_is_refused() -> None:
    with pytest.raises(PasswordRefused):
        check_policy("z" * (MAX_LENGTH + 1))


def test_hash_is_argon2id(good_hash: str) -> None:
    assert good_hash.startswith("$argon2id$")
    assert GOOD not in good_hash


def test_hashing_twice_uses_a_fresh_salt(good_hash: str) -> None:
    assert hash_password(GOOD) != good_hash


def test_verify_is_true_for_the_right_password(good_hash: str) -> None:
    assert verify_password(good_hash, GOOD) is True


@pytest.mark.parametrize("attempt", ["correct horse battery stapler", "Correct horse battery "
                                     "staple", "", "z" * (MAX_LENGTH + 1)])
def test_verify_is_false_for_a_wrong_password(good_hash: str, attempt: str) -> None:
    assert verify_password(good_hash, attempt) is False


@pytest.mark.parametrize("stored", ["", "not a hash", "$argon2id$v=19$m=1,t=1,p=1$AAAA$AAAA",
                                    "$2b$12$abcdefghijklmnopqrstuu"])
def test_verify_against_a_malformed_hash_is_false_not_an_error(stored: str) -> None:
    assert verify_password(stored, GOOD) is False


@pytest.mark.parametrize("password", ["Password123!", "abcdefghijkl", "x" * 64, "azerty123456",
                                      "Motdepasse2024!", "0123456789012", "ababababababab",
                                      "QWERTYUIOP!!", "Marseille13013"])
def test_common_patterns_are_refused(password: str) -> None:
    with pytest.raises(PasswordRefused, match="too common"):
        check_policy(password)


def test_the_username_is_not_a_password() -> None:
    with pytest.raises(PasswordRefused, match="username"):
        check_policy("jeanne.dupont1", username="jeanne.dupont")
    check_policy("a quiet river at dawn", username="jeanne.dupont")
