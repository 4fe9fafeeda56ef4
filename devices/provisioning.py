"""The factory path: a device that made its own key is given its certificate and a code.

Design (issue 4: the key never leaves the device): the device generates its P-256 key and a
CSR whose CN is its id (random, ``<model>-<12 hex>``), and hands over the CSR only. The
factory station checks it, issues the certificate, registers the device as provisioned with
a fresh pairing code, and writes back what the device needs to run:

    device.pem        its certificate (CN = device id, client-auth only)
    ca.pem            the root that signs the broker's certificate
    enrolment.json    device id, model, serial, broker host and port, and the pairing code
                      the device shows to its owner (the registry keeps only its hash)

No private key is ever read, written or transmitted by this side.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from devices.ca import CertificateAuthority, write_private
from devices.errors import CertificateRequestError, DuplicateDevice
from devices.identity import MODELS
from devices.registry import Registry

ENROLMENT_FILE = "enrolment.json"
CERT_FILE = "device.pem"
CA_FILE = "ca.pem"
CSR_FILE = "device.csr"  # where a device leaves its request, by default


@dataclass(frozen=True)
class Enrolment:
    device_id: str
    model: str
    serial: str
    pairing_code: str
    broker_host: str
    broker_port: int


def csr_common_name(csr_pem: bytes) -> str:
    """The CN a CSR asks for; CertificateRequestError if it is not a single-CN PEM CSR."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CertificateRequestError(f"not a PEM CSR: {exc}") from None
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise CertificateRequestError("the CSR must name exactly one CN: the device id")
    return str(names[0].value)


async def provision(registry: Registry, ca: CertificateAuthority, *, model: str, serial: str,
                    csr_pem: bytes, broker_host: str, broker_port: int,
                    firmware_version: str | None = None) -> tuple[Enrolment, bytes]:
    """Issue the certificate for the device's CSR and register it, waiting for its owner.
    Returns the enrolment and the certificate PEM. Raises CertificateRequestError for a
    CSR the CA refuses, DuplicateDevice for a known id or model and serial."""
    if model not in MODELS:
        raise CertificateRequestError(f"unknown model {model!r}; one of {', '.join(MODELS)}")
    device_id = csr_common_name(csr_pem)
    if await registry.lookup([device_id]):
        raise DuplicateDevice(f"device {device_id} is already registered")
    cert_pem = await asyncio.to_thread(ca.issue_client, csr_pem)  # checks key, CN, signature
    _, code = await registry.provision(device_id, model=model, serial=serial,
                                       cert_pem=cert_pem, firmware_version=firmware_version)
    return Enrolment(device_id, model, serial, code, broker_host, broker_port), cert_pem


def write_enrolment(directory: Path, enrolment: Enrolment, cert_pem: bytes,
                    ca: CertificateAuthority) -> None:
    """What the device loads: its certificate, the CA to trust, its id, broker and code."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CERT_FILE).write_bytes(cert_pem)
    (directory / CA_FILE).write_bytes(ca.ca_file.read_bytes())
    # Owner-only: it holds the pairing code until the device shows it.
    write_private(directory / ENROLMENT_FILE,
                  (json.dumps(asdict(enrolment), indent=2) + "\n").encode())
