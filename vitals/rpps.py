"""RPPS numbers: the French national identifier of a health professional.

Eleven digits whose last one is a Luhn check digit over the first ten. Validation here only
says the number is well formed; whether it belongs to a practising professional is the
directory's answer (the OpenID Connect path gets it from the identity provider).
"""

from __future__ import annotations

from vitals.errors import InvalidProfessional

# Professions bound by medical secrecy that may receive a patient's health data (French
# public health code: the "professions de santé" of part IV, and the directory's codes).
SECRECY_BOUND_PROFESSIONS = frozenset({
    "physician", "pharmacist", "midwife", "nurse", "dentist", "physiotherapist",
    "dietitian",
})


def luhn_ok(digits: str) -> bool:
    """True when the last digit of ``digits`` is the Luhn check digit of the others."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def validate_rpps(number: str) -> str:
    """The RPPS number itself when it is 11 ASCII digits with a valid check digit."""
    if len(number) != 11 or not number.isascii() or not number.isdigit():
        raise InvalidProfessional("an RPPS number is 11 digits")
    if not luhn_ok(number):
        raise InvalidProfessional("the RPPS check digit is wrong")
    return number


def validate_profession(profession: str) -> str:
    """The profession when it is bound by medical secrecy; else an error naming the rule."""
    if profession not in SECRECY_BOUND_PROFESSIONS:
        raise InvalidProfessional(f"{profession!r} is not a profession bound by medical secrecy")
    return profession
