"""Passwords as CNIL (2022) asks: 12+ characters, no composition rules, a blocklist, argon2id."""

from __future__ import annotations

import argon2

MIN_LENGTH = 12
MAX_LENGTH = 128  # long passphrases welcome; unbounded input is a hashing DoS
# The start of a blocklist; issue 7 brings a real list of breached passwords.
_COMMON = frozenset({"password1234", "password123!", "123456789012", "azertyuiop12",
                     "motdepasse12", "qwertyuiop12", "iloveyou1234", "adminadmin12"})
_HASHER = argon2.PasswordHasher()  # argon2id with the library's RFC 9106 defaults


class PasswordRefused(ValueError):
    """The password does not meet the policy; the message says why, for the user."""


def check_policy(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordRefused(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordRefused(f"a password has at most {MAX_LENGTH} characters")
    if password.lower() in _COMMON:
        raise PasswordRefused("this password is too common")


def hash_password(password: str) -> str:
    """Check the policy and hash; slow on purpose, so call it off the event loop."""
    check_policy(password)
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches; slow on purpose, so call it off the event loop."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _HASHER.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False
