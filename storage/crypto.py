"""Envelope encryption: a key-encryption key (KEK) wraps one data key per owner.

An owner is a patient (their health data) or ``system:<purpose>`` (quarantine, secrets).
Data keys exist in the database only wrapped; erasing a patient deletes their wrapped keys,
after which nothing sealed with them opens again, in any copy of the database.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.errors import IntegrityError, KeyUnavailable

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # random 96-bit nonces: fine far below 2**32 seals per key


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a random nonce; the result is nonce || ciphertext || tag."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def seal_many(key: bytes, plaintexts: Sequence[bytes], aads: Sequence[bytes]) -> list[bytes]:
    """``seal`` of each (plaintext, aad) under one key: one cipher object and one draw of
    randomness for the lot (a batch of small segments paid more for those than for AES)."""
    aead = AESGCM(key)
    nonces = memoryview(secrets.token_bytes(NONCE_BYTES * len(plaintexts)))
    out = []
    for i, (plaintext, aad) in enumerate(zip(plaintexts, aads, strict=True)):
        nonce = bytes(nonces[i * NONCE_BYTES:(i + 1) * NONCE_BYTES])
        out.append(nonce + aead.encrypt(nonce, plaintext, aad))
    return out


def open_sealed(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Open a blob made by ``seal`` with the same ``aad``; raises IntegrityError otherwise."""
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise IntegrityError("sealed data does not open with this key and identity") from None


class KeyProvider(Protocol):
    """Wraps and unwraps data keys; a KMS client fits the same shape."""

    @property
    def kek_id(self) -> str: ...

    def wrap(self, data_key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, kek_id: str, context: bytes) -> bytes: ...


class LocalKeyFile:
    """The embedded default: a 256-bit KEK in a file readable by its owner only."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        """Load the KEK from ``path``; with ``create`` (development only), make it first if
        it is missing. A production KEK that silently appeared would make the data it
        protects unreadable the day the real one is mounted again."""
        self._path = path
        if not path.exists() and not create:
            raise KeyUnavailable(f"no key-encryption key at {path}")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(KEY_BYTES))
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise KeyUnavailable(f"the key file {path} does not hold a 256-bit key")
        self._key = key
        # An id derived from the key, not the key: it tells which KEK wrapped a data key.
        self._id = "local:" + hashlib.sha256(b"healthiot-kek-id" + key).hexdigest()[:16]

    @property
    def kek_id(self) -> str:
        return self._id

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        return seal(self._key, data_key, context)

    def unwrap(self, wrapped: bytes, kek_id: str, context: bytes) -> bytes:
        if kek_id != self._id:
            raise KeyUnavailable(f"data key wrapped by {kek_id}, this provider holds {self._id}")
        return open_sealed(self._key, wrapped, context)


class KekRing:
    """Several KEKs during a rotation: wraps with the newest, unwraps with whichever KEK
    wrapped the key (by id), so reads never fail while keys are being re-wrapped."""

    def __init__(self, current: KeyProvider, *previous: KeyProvider) -> None:
        self._current = current
        self._by_id = {p.kek_id: p for p in (current, *previous)}

    @property
    def kek_id(self) -> str:
        return self._current.kek_id

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        return self._current.wrap(data_key, context)

    def unwrap(self, wrapped: bytes, kek_id: str, context: bytes) -> bytes:
        provider = self._by_id.get(kek_id)
        if provider is None:
            raise KeyUnavailable(f"data key wrapped by {kek_id}, which this ring lacks")
        return provider.unwrap(wrapped, kek_id, context)
