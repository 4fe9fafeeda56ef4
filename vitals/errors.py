"""Errors of the vital-sign domain.

    VitalsError
    └── PayloadError (also ValueError): a device payload that cannot be accepted as sent;
        ``reason`` is a short machine-readable code stored with the quarantined message.
    └── InvalidProfessional (also ValueError): a malformed RPPS number, or a profession that
        may not receive health data.
"""


class VitalsError(Exception):
    """Root of every error raised by the vitals package."""


class PayloadError(VitalsError, ValueError):
    """A payload refused as a whole; ``reason`` names why, for quarantine and metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class InvalidProfessional(VitalsError, ValueError):
    """A clinician identity that cannot be accepted: bad RPPS number or profession."""
