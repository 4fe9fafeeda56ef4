"""The development certificate authority: a root, a device-issuing CA, server certificates.

Layout under the PKI directory (keys owner-only):

    ca.pem            the root certificate: what a client trusts for the broker and the API
    root.key          the root key; `healthiot ca init --offline-root DIR` writes it to DIR
                      instead, to be kept offline: the online CA then signs device and
                      service certificates and CRLs, and refuses server certificates
    device-ca.pem/key the online CA that signs device and service client certificates
    clients-ca.pem    device CA + root: the chain the broker needs to verify a client

Device certificates are issued only from a CSR: the device makes its key and keeps it. The
device CA also signs the certificate revocation list the broker checks at each handshake.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devices.errors import CertificateRequestError
from devices.identity import is_device_id, is_service_id

DEVICE_VALIDITY = dt.timedelta(days=365)
SERVER_VALIDITY = dt.timedelta(days=397)  # the longest lifetime browsers accept
CA_VALIDITY = dt.timedelta(days=3650)
_CLOCK_SKEW = dt.timedelta(minutes=5)  # a device clock slightly behind still accepts the cert
# OpenSSL refuses every client once a CRL is past its nextUpdate, so a CRL must be
# re-signed well before then: each revocation does, and so does `healthiot devices crl`.
CRL_VALIDITY = dt.timedelta(days=30)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only, atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "healthiot development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ca_cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
             issuer_key: ec.EllipticCurvePrivateKey, path_length: int) -> x509.Certificate:
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # Key identifiers on every certificate: strict validators (cryptography's, which
        # sslyze uses) require them to build the path.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class CertificateAuthority:
    """The root and the device-issuing CA, loaded from (or created in) ``directory``."""

    directory: Path
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey | None  # None: kept offline
    device_ca: x509.Certificate
    device_key: ec.EllipticCurvePrivateKey

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def clients_ca_file(self) -> Path:
        return self.directory / "clients-ca.pem"

    @classmethod
    def load_or_create(cls, directory: Path, *,
                       offline_root: Path | None = None) -> CertificateAuthority:
        """Load the CA from ``directory``; create it there first if it does not exist, with
        the root key in ``offline_root`` (a directory to take offline) when given."""
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "device-ca.key").exists():
            root_key, device_key = new_key(), new_key()
            root = _ca_cert("healthiot dev root CA", root_key, None, root_key, 1)
            device_ca = _ca_cert("healthiot dev device CA", device_key, root, root_key, 0)
            if offline_root is not None:
                offline_root.mkdir(parents=True, exist_ok=True)
            write_private((offline_root or directory) / "root.key", key_pem(root_key))
            (directory / "ca.pem").write_bytes(cert_pem(root))
            (directory / "device-ca.pem").write_bytes(cert_pem(device_ca))
            (directory / "clients-ca.pem").write_bytes(cert_pem(device_ca) + cert_pem(root))
            write_private(directory / "device-ca.key", key_pem(device_key))  # last: the marker

        def load_key(name: str) -> ec.EllipticCurvePrivateKey:
            key = serialization.load_pem_private_key((directory / name).read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return key

        return cls(directory,
                   x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes()),
                   load_key("root.key") if (directory / "root.key").exists() else None,
                   x509.load_pem_x509_certificate((directory / "device-ca.pem").read_bytes()),
                   load_key("device-ca.key"))

    def issue_client(self, csr_pem: bytes, *, validity: dt.timedelta = DEVICE_VALIDITY,
                     service: bool = False, now: dt.datetime | None = None) -> bytes:
        """Sign a client-auth certificate for the CSR's CN (a device id, or a service id when
        ``service``), valid from ``now`` (default: the current time, less the clock-skew
        allowance) for ``validity``; raises CertificateRequestError for a CSR that is not
        acceptable. A shortcut for :class:`ClientCertificateBuilder`."""
        builder = ClientCertificateBuilder().validity(validity)
        if service:
            builder = builder.for_service()
        if now is not None:
            builder = builder.issued_at(now)
        return builder.csr(csr_pem).sign(self)

    def crl(self, revoked: Iterable[tuple[int, dt.datetime]], *,
            validity: dt.timedelta = CRL_VALIDITY) -> bytes:
        """A PEM CRL of the device CA listing ``revoked`` (serial, revocation time).

        The broker verifies the leaf certificate only (OpenSSL's CRL_CHECK without
        CRL_CHECK_ALL), and every client certificate is signed by the device CA, so this one
        list covers devices and services alike."""
        now = _now()
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(self.device_ca.subject)
                   .last_update(now - _CLOCK_SKEW)
                   .next_update(now + validity)
                   .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.device_key.public_key()), critical=False))
        for serial, at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(at.astimezone(dt.UTC)).build())
        crl = builder.sign(self.device_key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    def issue_server(self, hostnames: list[str]) -> tuple[bytes, bytes]:
        """A server key and certificate (serverAuth) for the broker or the API; raises
        CertificateRequestError when the root key is offline (sign them where it is)."""
        if self.root_key is None:
            raise CertificateRequestError("the root key is offline: server certificates are "
                                          "signed where it is kept")
        key = new_key()
        alt: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hostnames[0]))
            .issuer_name(self.root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + SERVER_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.root_key.public_key()), critical=False)
            .sign(self.root_key, hashes.SHA256())
        )
        return key_pem(key), cert_pem(cert)


@dataclass(frozen=True)
class ClientCertificateBuilder:
    """An immutable builder of client certificates, in the style of cryptography's: each
    method checks its field and returns a new builder; :meth:`sign` checks the whole.

        ClientCertificateBuilder().csr(pem).validity(dt.timedelta(days=90)).sign(ca)

    Every check raises CertificateRequestError. The profile is fixed: CN = the CSR's identity,
    ECDSA P-256, client authentication only, a random serial, the device CA as issuer.
    """

    _csr: x509.CertificateSigningRequest | None = None
    _cn: str = ""
    _service: bool = False
    _validity: dt.timedelta = DEVICE_VALIDITY
    _issued_at: dt.datetime | None = None

    def csr(self, pem: bytes) -> ClientCertificateBuilder:
        """The device's (or service's) request; its key and CN are checked now."""
        if self._csr is not None:
            raise CertificateRequestError("the CSR is already set")
        try:
            csr = x509.load_pem_x509_csr(pem)
        except ValueError as exc:
            raise CertificateRequestError(f"not a PEM CSR: {exc}") from None
        if not csr.is_signature_valid:
            raise CertificateRequestError("the CSR signature does not verify")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise CertificateRequestError("device keys must be ECDSA P-256")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(names[0].value) if len(names) == 1 else ""
        self._check_identity(cn, self._service)
        return replace(self, _csr=csr, _cn=cn)

    def for_service(self) -> ClientCertificateBuilder:
        """A service identity (svc-...) rather than a device id."""
        if self._csr is not None:
            self._check_identity(self._cn, True)
        return replace(self, _service=True)

    def validity(self, validity: dt.timedelta) -> ClientCertificateBuilder:
        if validity <= dt.timedelta(0):
            raise CertificateRequestError("a certificate's validity must be positive")
        if validity > CA_VALIDITY:
            raise CertificateRequestError("a client certificate cannot outlive its CA")
        return replace(self, _validity=validity)

    def issued_at(self, at: dt.datetime) -> ClientCertificateBuilder:
        """When the validity starts (less the clock-skew allowance); default: now."""
        if at.tzinfo is None:
            raise CertificateRequestError("the issue time must be timezone-aware")
        return replace(self, _issued_at=at)

    def sign(self, ca: CertificateAuthority) -> bytes:
        """The PEM certificate, signed by ``ca``'s device CA."""
        if self._csr is None:
            raise CertificateRequestError("a certificate needs a CSR")
        now = self._issued_at or _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self._cn)]))
            .issuer_name(ca.device_ca.subject)
            .public_key(self._csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + self._validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._csr.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.device_key.public_key()), critical=False)
            .sign(ca.device_key, hashes.SHA256())
        )
        return cert_pem(cert)

    @staticmethod
    def _check_identity(cn: str, service: bool) -> None:
        if not (is_service_id(cn) if service else is_device_id(cn)):
            raise CertificateRequestError(f"CN {cn!r} is not an acceptable identity")


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    """A CSR for ``common_name`` signed with ``key`` (what a device or service sends)."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)
