"""Passwords as CNIL (2022) asks: 12+ characters, no composition rules, a blocklist, argon2id."""

from __future__ import annotations

import asyncio

import argon2

MIN_LENGTH = 12
MAX_LENGTH = 128  # long passphrases welcome; unbounded input is a hashing DoS
# Words that top every breached-password list (French and English), and keyboard rows. A
# password that is one of them padded with digits and symbols, a repeated pattern, or the
# username itself is refused: these are what online guessing tries first. This is what the
# CNIL asks for in place of composition rules.
_COMMON_WORDS = frozenset("""
password passw0rd motdepasse azerty qwerty qwertz azertyuiop qwertyuiop asdfgh wxcvbn
iloveyou jetaime bonjour soleil doudou chouchou loulou marseille paris football
welcome letmein admin administrator monkey dragon master sunshine princess shadow
abc abcdef abcdefgh changeme secret trustno1 superman batman starwars pokemon
healthiot sante santé medecin docteur hopital
""".split())
_SEQUENCES = ("0123456789", "9876543210", "abcdefghijklmnopqrstuvwxyz",
              "azertyuiopqsdfghjklmwxcvbn", "qwertyuiopasdfghjklzxcvbnm")
_HASHER = argon2.PasswordHasher()  # argon2id with the library's RFC 9106 defaults


class PasswordRefused(ValueError):
    """The password does not meet the policy; the message says why, for the user."""


def _too_common(password: str, username: str) -> bool:
    lowered = password.lower()
    core = lowered.strip("0123456789!@#$%^&*()_+-=.,;:?'\" ")
    if not core or core in _COMMON_WORDS or core in username:
        return True
    if len(username) >= 4 and username in core:
        return True
    if len(set(lowered)) <= 3:  # "aaaaaaaaaaaa", "abababababab"
        return True
    return any(lowered in seq or core in seq for seq in _SEQUENCES)


def check_policy(password: str, *, username: str = "") -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordRefused(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordRefused(f"a password has at most {MAX_LENGTH} characters")
    if _too_common(password, username.lower()):
        raise PasswordRefused("this password is too common or too close to your username")


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


async def hash_password_async(password: str) -> str:
    """``hash_password`` off the event loop."""
    return await asyncio.to_thread(hash_password, password)
