"""Sealing (AES-256-GCM bound to its row) and the local key-encryption key file."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.crypto import KEY_BYTES, NONCE_BYTES, LocalKeyFile, open_sealed, seal
from storage.errors import IntegrityError, KeyUnavailable

KEY = bytes(range(KEY_BYTES))
AAD = b"patient:7f1c|segment:heart_rate|2025-06-11"
GCM_TAG_BYTES = 16


# --- seal / open_sealed ------------------------------------------------------------------


@settings(database=None, deadline=None, max_examples=100)
@given(st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES), st.binary(max_size=2048),
       st.binary(max_size=128))
def test_open_of_seal_gives_back_the_plaintext(key: bytes, plaintext: bytes, aad: bytes) -> None:
    assert open_sealed(key, seal(key, plaintext, aad), aad) == plaintext


def test_sealed_blob_is_nonce_ciphertext_and_tag() -> None:
    plaintext = b"heart_rate 72"
    blob = seal(KEY, plaintext, AAD)
    assert len(blob) == NONCE_BYTES + len(plaintext) + GCM_TAG_BYTES
    assert plaintext not in blob


def test_sealing_twice_uses_fresh_nonces() -> None:
    first, second = seal(KEY, b"72", AAD), seal(KEY, b"72", AAD)
    assert first[:NONCE_BYTES] != second[:NONCE_BYTES]
    assert first != second


def test_blob_copied_to_another_row_does_not_open() -> None:
    blob = seal(KEY, b"heart_rate 72", AAD)
    with pytest.raises(IntegrityError):
        open_sealed(KEY, blob, b"patient:0000|segment:heart_rate|2025-06-11")


def test_blob_does_not_open_with_empty_aad_when_sealed_with_one() -> None:
    with pytest.raises(IntegrityError):
        open_sealed(KEY, seal(KEY, b"72", AAD), b"")


def test_blob_does_not_open_with_another_key() -> None:
    blob = seal(KEY, b"heart_rate 72", AAD)
    with pytest.raises(IntegrityError):
        open_sealed(secrets.token_bytes(KEY_BYTES), blob, AAD)


@pytest.mark.parametrize("index", [0, NONCE_BYTES - 1, NONCE_BYTES, NONCE_BYTES + 5, -1])
def test_any_tampered_byte_is_detected(index: int) -> None:
    blob = bytearray(seal(KEY, b"heart_rate 72 at 10:00", AAD))
    blob[index] ^= 0x01
    with pytest.raises(IntegrityError):
        open_sealed(KEY, bytes(blob), AAD)


@pytest.mark.parametrize("blob", [b"", b"\x00" * NONCE_BYTES, b"\x00" * (NONCE_BYTES + 15)])
def test_truncated_blob_is_refused(blob: bytes) -> None:
    with pytest.raises(IntegrityError):
        open_sealed(KEY, blob, AAD)


def test_truncating_a_real_blob_is_detected() -> None:
    blob = seal(KEY, b"heart_rate 72", AAD)
    with pytest.raises(IntegrityError):
        open_sealed(KEY, blob[:-1], AAD)


# --- LocalKeyFile ------------------------------------------------------------------------


def test_key_file_is_created_owner_only_with_a_256_bit_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kek.bin"
    LocalKeyFile(path, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == KEY_BYTES


def test_existing_key_file_is_reused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "kek.bin"
    first = LocalKeyFile(path, create=True)
    key = path.read_bytes()
    second = LocalKeyFile(path, create=True)
    assert path.read_bytes() == key
    assert second.kek_id == first.kek_id
    wrapped = first.wrap(b"d" * KEY_BYTES, b"patient:1")
    assert second.unwrap(wrapped, first.kek_id, b"patient:1") == b"d" * KEY_BYTES


def test_unwrap_of_wrap_gives_back_the_data_key(tmp_path: Path) -> None:
    kek = LocalKeyFile(tmp_path / "kek.bin", create=True)
    data_key = secrets.token_bytes(KEY_BYTES)
    wrapped = kek.wrap(data_key, b"patient:1")
    assert data_key not in wrapped
    assert kek.unwrap(wrapped, kek.kek_id, b"patient:1") == data_key


def test_unwrap_with_another_context_is_refused(tmp_path: Path) -> None:
    kek = LocalKeyFile(tmp_path / "kek.bin", create=True)
    wrapped = kek.wrap(secrets.token_bytes(KEY_BYTES), b"patient:1")
    with pytest.raises(IntegrityError):
        kek.unwrap(wrapped, kek.kek_id, b"patient:2")


def test_unwrap_naming_another_kek_is_refused(tmp_path: Path) -> None:
    kek = LocalKeyFile(tmp_path / "kek.bin", create=True)
    wrapped = kek.wrap(secrets.token_bytes(KEY_BYTES), b"patient:1")
    with pytest.raises(KeyUnavailable):
        kek.unwrap(wrapped, "local:0000000000000000", b"patient:1")


def test_data_key_wrapped_by_another_kek_does_not_open(tmp_path: Path) -> None:
    ours = LocalKeyFile(tmp_path / "a.bin", create=True)
    theirs = LocalKeyFile(tmp_path / "b.bin", create=True)
    assert ours.kek_id != theirs.kek_id
    wrapped = theirs.wrap(secrets.token_bytes(KEY_BYTES), b"patient:1")
    with pytest.raises(KeyUnavailable):
        ours.unwrap(wrapped, theirs.kek_id, b"patient:1")
    with pytest.raises(IntegrityError):  # even when lied to about which KEK wrapped it
        ours.unwrap(wrapped, ours.kek_id, b"patient:1")


def test_kek_id_does_not_reveal_the_key(tmp_path: Path) -> None:
    path = tmp_path / "kek.bin"
    kek_id = LocalKeyFile(path, create=True).kek_id
    key = path.read_bytes()
    assert kek_id.startswith("local:")
    for form in (key.hex(), key.hex().upper(), key.hex()[:16], key.decode("latin-1")):
        assert form not in kek_id
    assert key not in kek_id.encode()


@pytest.mark.parametrize("size", [0, 16, KEY_BYTES - 1, KEY_BYTES + 1])
def test_key_file_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "kek.bin"
    path.write_bytes(b"k" * size)
    with pytest.raises(KeyUnavailable):
        LocalKeyFile(path, create=True)


def test_a_missing_key_file_is_an_error_unless_creation_is_asked(tmp_path):
    with pytest.raises(KeyUnavailable):
        LocalKeyFile(tmp_path / "absent.bin")
    assert not (tmp_path / "absent.bin").exists()
