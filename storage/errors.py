"""Errors of the storage package.

    StorageError
    ├── MigrationError: a migration file failed or the recorded history does not match
    ├── KeyUnavailable (also LookupError): no data key for a patient (never created, or erased)
    ├── IntegrityError (also ValueError): a sealed blob does not open with its row's identity
    ├── IdentityConflict: an identity-provider sign-in whose RPPS number belongs to an
    │   account bound to another identity
    └── DuplicateOperator: an operator account with that username exists
"""


class StorageError(Exception):
    """Root of every error raised by the storage package."""


class MigrationError(StorageError):
    """Applying the schema failed; the message names the migration."""


class KeyUnavailable(StorageError, LookupError):
    """No usable data key: the patient does not exist or was erased."""


class IntegrityError(StorageError, ValueError):
    """Authenticated decryption failed: tampered, moved to another row, or the wrong key."""


class IdentityConflict(StorageError):
    """The account an identity-provider sign-in would use belongs to another identity."""


class DuplicateOperator(StorageError):
    """An operator with this username exists already."""
