"""Per-owner secrets kept outside the database: what makes erasure reach old backups.

A patient's data key is derived from two halves: key material stored (wrapped by the KEK) in
the database, and a secret in a file of its own outside it. Erasing the patient deletes both.
A database dump taken before the erasure still holds the wrapped half, but the other half is
gone: nothing of that patient opens again, even with the KEK. The directory is key material:
back it up apart from the database, with a short retention, or keep it in a KMS or HSM
(this class is the local stand-in for one).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from storage.errors import KeyUnavailable

SECRET_BYTES = 32


class OwnerSecrets:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, owner: str) -> Path:
        # Hashed names: a directory listing does not list patients.
        return self._dir / (hashlib.sha256(owner.encode()).hexdigest()[:40] + ".key")

    def create(self, owner: str) -> None:
        """Make the owner's secret unless it exists (safe to repeat)."""
        try:
            fd = os.open(self._path(owner), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(SECRET_BYTES))
            f.flush()
            os.fsync(f.fileno())

    def derive(self, owner: str, material: bytes) -> bytes:
        """The owner's data key from the database half and the secret half."""
        try:
            secret = self._path(owner).read_bytes()
        except FileNotFoundError:
            raise KeyUnavailable(f"the key of {owner} is erased or missing") from None
        return hmac.new(secret, b"healthiot-data-key|" + material, hashlib.sha256).digest()

    def destroy(self, owner: str) -> bool:
        """Erase the owner's secret; True when there was one."""
        path = self._path(owner)
        try:
            with open(path, "r+b") as f:  # overwrite first: an unlinked file may linger
                f.write(secrets.token_bytes(SECRET_BYTES))
                f.flush()
                os.fsync(f.fileno())
            path.unlink()
        except FileNotFoundError:
            return False
        return True
