"""Errors of the devices package.

    DeviceError
    ├── CertificateRequestError (also ValueError): a CSR that the CA will not sign
    └── UnknownDevice (also LookupError): no such device in the registry
"""


class DeviceError(Exception):
    """Root of every error raised by the devices package."""


class CertificateRequestError(DeviceError, ValueError):
    """A certificate signing request was refused; the message says why."""


class UnknownDevice(DeviceError, LookupError):
    """The registry holds no device with that id."""
