"""Errors of the devices package.

    DeviceError
    ├── CertificateRequestError (also ValueError): a CSR that the CA will not sign
    ├── UnknownDevice (also LookupError): no such device in the registry (or not yours)
    ├── InvalidTransition (also ValueError): a life-cycle change the states do not allow
    ├── DuplicateDevice (also ValueError): that id, or that model and serial, exists
    ├── PairingRefused: a serial and pairing code that pair nothing
    │   └── PairingThrottled: too many wrong codes lately; ``retry_after_s`` says when
    ├── InvitationRefused: a household invitation code that invites to nothing (unknown,
    │   used or expired: one answer)
    ├── HouseholdRefused (also ValueError): a sharing change the device does not allow
    │   (not a scale, full, already a user, the owner leaving); ``forbidden`` when only the
    │   owner may do it
    ├── CurrentCertificate (also ValueError): revoking the certificate a device uses now
    │   (revoke the device instead)
    ├── RenewalRefused: a renewal CSR that will not be signed; ``reason`` is a short code
    └── PluginBuildFailed: the broker's policy plugin could not be compiled (no compiler or
        no Mosquitto headers)
"""


class DeviceError(Exception):
    """Root of every error raised by the devices package."""


class CertificateRequestError(DeviceError, ValueError):
    """A certificate signing request was refused; the message says why."""


class UnknownDevice(DeviceError, LookupError):
    """The registry holds no device with that id (for that patient, when one is named)."""


class InvalidTransition(DeviceError, ValueError):
    """The device's state does not allow the requested change; the message names both."""

    def __init__(self, device_id: str, current: str, wanted: str,
                 allowed: frozenset[str]) -> None:
        options = ", ".join(sorted(allowed)) or "nothing (final state)"
        super().__init__(f"device {device_id} is {current}: it cannot become {wanted} "
                         f"(from {current}: {options})")
        self.device_id, self.current, self.wanted = device_id, current, wanted


class DuplicateDevice(DeviceError, ValueError):
    """A device with that id, or that model and serial, is already registered."""


class PairingRefused(DeviceError):
    """No device waiting to be paired matches that serial and code. Deliberately vague:
    the caller learns nothing about serials that are not theirs."""


class PairingThrottled(PairingRefused):
    """Too many wrong pairing codes in the window; try again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvitationRefused(DeviceError):
    """No open invitation has that code. Deliberately vague, as PairingRefused."""


class HouseholdRefused(DeviceError, ValueError):
    """A change to who uses a device that is not allowed; the message says why.
    ``forbidden``: the caller uses the device but only its owner may do this."""

    def __init__(self, message: str, *, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


class CurrentCertificate(DeviceError, ValueError):
    """That certificate is the device's current one: revoking it alone would cut the
    device off while the registry still lets it send. Revoke the device instead."""


class RenewalRefused(DeviceError):
    """A renewal request is refused; ``reason`` is a short code sent back to the device
    (unknown_device, not_paired, certificate_invalid, bad_csr, too_many_renewals)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"renewal refused: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


class PluginBuildFailed(DeviceError):
    """The broker's policy plugin could not be compiled; the message says what to install."""
