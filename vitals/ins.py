"""The INS (Identifiant National de Santé) a patient gives to feed their medical record: the
NIR, 13 characters (Corsica: 2A/2B in the department), and its 2-digit key."""

from __future__ import annotations


def validate_ins(ins: str) -> str:
    """``ins`` when well formed with a correct key; raises ValueError otherwise."""
    if len(ins) != 15 or not ins.isascii():
        raise ValueError("an INS is 15 characters: 13 for the number, 2 for the key")
    body, key = ins[:13].upper(), ins[13:]
    # Corsica: 2A counts as 19, 2B as 18, in the key computation.
    numeric = body.replace("2A", "19", 1) if body[5:7] == "2A" else body
    numeric = numeric.replace("2B", "18", 1) if body[5:7] == "2B" else numeric
    if not numeric.isdigit() or not key.isdigit():
        raise ValueError("an INS holds digits only (2A/2B for Corsica)")
    if int(key) != 97 - int(numeric) % 97:
        raise ValueError("the INS key is wrong")
    return body + key
