"""RPPS numbers: 11 digits and a Luhn key; professions bound by medical secrecy only."""

from __future__ import annotations

import pytest

from vitals.errors import InvalidProfessional
from vitals.rpps import luhn_ok, validate_profession, validate_rpps


def _with_key(ten: str) -> str:
    return next(ten + k for k in "0123456789" if luhn_ok(ten + k))


def test_a_number_with_its_luhn_key_is_accepted() -> None:
    number = _with_key("1000123456")
    assert validate_rpps(number) == number
    assert luhn_ok("79927398713")  # the textbook Luhn example


@pytest.mark.parametrize("bad", ["1234567890", "123456789012", "1000 123456", "",
                                 "١٠٠٠١٢٣٤٥٦٧", "1000123456x"])
def test_malformed_numbers_are_refused(bad: str) -> None:
    with pytest.raises(InvalidProfessional, match="11 digits"):
        validate_rpps(bad)


def test_every_single_digit_error_is_caught() -> None:
    good = _with_key("1000123456")
    for i in range(11):
        for d in "0123456789":
            if d != good[i]:
                wrong = good[:i] + d + good[i + 1:]
                with pytest.raises(InvalidProfessional, match="check digit"):
                    validate_rpps(wrong)


def test_only_professions_bound_by_secrecy() -> None:
    assert validate_profession("physician") == "physician"
    with pytest.raises(InvalidProfessional, match="secrecy"):
        validate_profession("sports_coach")


def test_ins_key() -> None:
    from vitals.ins import validate_ins

    assert validate_ins("189127512501282") == "189127512501282"  # 97 - n % 97 = 82
    for bad in ("189127512501283", "18912751250128", "18912751250128x"):
        with pytest.raises(ValueError):
            validate_ins(bad)
    body = "28502" + "2A" + "123456"  # born in Corsica: 2A counts as 19 in the key
    key = 97 - int(body.replace("2A", "19")) % 97
    assert validate_ins(f"{body}{key:02d}") == f"{body}{key:02d}"
