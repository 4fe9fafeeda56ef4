"""The development CA: files and permissions, device certificates from CSRs, server certs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

from devices.ca import (
    DEVICE_VALIDITY,
    CertificateAuthority,
    ClientCertificateBuilder,
    make_csr,
    new_key,
)
from devices.errors import CertificateRequestError
from devices.identity import new_device_id


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def device_key() -> ec.EllipticCurvePrivateKey:
    return new_key()


def issued(ca: CertificateAuthority, csr_pem: bytes, *, service: bool = False
           ) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.issue_client(csr_pem, service=service))


def common_names(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


# --- files -------------------------------------------------------------------------------


def test_load_or_create_writes_the_pki_with_owner_only_keys(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "pki")
    directory = tmp_path / "pki"
    for name in ("ca.pem", "root.key", "device-ca.pem", "device-ca.key", "clients-ca.pem"):
        assert (directory / name).is_file(), name
    for name in ("root.key", "device-ca.key"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    assert not list(directory.glob("*.tmp"))
    assert ca.ca_file == directory / "ca.pem"
    chain = x509.load_pem_x509_certificates(ca.clients_ca_file.read_bytes())
    assert chain == [ca.device_ca, ca.root]


def test_second_load_gives_the_same_authority(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    second = CertificateAuthority.load_or_create(tmp_path)
    assert second.root == first.root
    assert second.device_ca == first.device_ca
    assert second.root.fingerprint(hashes.SHA256()) == first.root.fingerprint(hashes.SHA256())
    assert second.device_key.private_numbers() == first.device_key.private_numbers()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_root_and_device_ca_form_a_chain_of_cas(ca: CertificateAuthority) -> None:
    ca.root.verify_directly_issued_by(ca.root)  # self-signed
    ca.device_ca.verify_directly_issued_by(ca.root)
    root_bc = ca.root.extensions.get_extension_for_class(x509.BasicConstraints).value
    device_bc = ca.device_ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (root_bc.ca, device_bc.ca, device_bc.path_length) == (True, True, 0)
    assert isinstance(ca.device_key.curve, ec.SECP256R1)


# --- device certificates -----------------------------------------------------------------


def test_device_certificate_names_the_device_and_is_signed_by_the_device_ca(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey) -> None:
    device_id = new_device_id("watch")
    cert = issued(ca, make_csr(device_key, device_id))
    assert common_names(cert) == [device_id]
    assert cert.issuer == ca.device_ca.subject
    cert.verify_directly_issued_by(ca.device_ca)
    with pytest.raises((InvalidSignature, ValueError)):
        cert.verify_directly_issued_by(ca.root)
    assert cert.public_key() == device_key.public_key()  # the device keeps its own key


def test_device_certificate_is_for_client_auth_only_and_not_a_ca(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey) -> None:
    cert = issued(ca, make_csr(device_key, new_device_id("scale")))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign


def test_device_certificate_is_valid_now_for_the_device_validity(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey) -> None:
    before = dt.datetime.now(dt.UTC)
    cert = issued(ca, make_csr(device_key, new_device_id("thermometer")))
    after = dt.datetime.now(dt.UTC)  # X.509 times are whole seconds: issued in [before, after]
    assert cert.not_valid_before_utc <= before
    assert (before + DEVICE_VALIDITY - dt.timedelta(minutes=1) < cert.not_valid_after_utc
            <= after + DEVICE_VALIDITY)


def test_each_certificate_gets_its_own_serial(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(device_key, new_device_id("watch"))
    assert issued(ca, csr).serial_number != issued(ca, csr).serial_number


def test_service_certificate_needs_the_service_flag(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(device_key, "svc-bridge")
    with pytest.raises(CertificateRequestError):
        ca.issue_client(csr)
    assert common_names(issued(ca, csr, service=True)) == ["svc-bridge"]


def test_device_id_is_refused_as_a_service_identity(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(CertificateRequestError):
        ca.issue_client(make_csr(device_key, new_device_id("watch")), service=True)


@pytest.mark.parametrize("cn", ["svc-x", "a/b", "+", "#", "watch-1/+", "devices/#", "ab",
                                "Watch-12ab", "-watch-12ab", "watch 12ab", "watch-12ab\n",
                                "w" * 64])
def test_csr_with_an_unacceptable_device_id_is_refused(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey, cn: str) -> None:
    with pytest.raises(CertificateRequestError):
        ca.issue_client(make_csr(device_key, cn))


def test_csr_with_two_common_names_is_refused(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, new_device_id("watch")),
                      x509.NameAttribute(NameOID.COMMON_NAME, new_device_id("watch"))])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(device_key,
                                                                          hashes.SHA256())
    with pytest.raises(CertificateRequestError):
        ca.issue_client(csr.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize("make_key", [
    lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: ec.generate_private_key(ec.SECP256K1()),
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
], ids=["P-384", "secp256k1", "RSA-2048"])
def test_csr_with_a_key_other_than_p256_is_refused(ca: CertificateAuthority,
                                                   make_key: object) -> None:
    key = make_key()  # type: ignore[operator]
    with pytest.raises(CertificateRequestError, match="P-256"):
        ca.issue_client(make_csr(key, new_device_id("watch")))


@pytest.mark.parametrize("pem", [b"", b"garbage", b"-----BEGIN CERTIFICATE REQUEST-----\n"
                                 b"AAAA\n-----END CERTIFICATE REQUEST-----\n"])
def test_garbage_instead_of_a_csr_is_refused(ca: CertificateAuthority, pem: bytes) -> None:
    with pytest.raises(CertificateRequestError):
        ca.issue_client(pem)


def test_certificate_instead_of_a_csr_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateRequestError):
        ca.issue_client(ca.device_ca.public_bytes(serialization.Encoding.PEM))


def test_csr_whose_signature_does_not_verify_is_refused(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey) -> None:
    csr = x509.load_pem_x509_csr(make_csr(device_key, new_device_id("watch")))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the ECDSA signature's s
    forged = x509.load_der_x509_csr(bytes(der))
    assert not forged.is_signature_valid
    with pytest.raises(CertificateRequestError, match="signature"):
        ca.issue_client(forged.public_bytes(serialization.Encoding.PEM))


# --- server certificates -----------------------------------------------------------------


def test_server_certificate_covers_localhost_and_loopback_for_server_auth(
        ca: CertificateAuthority) -> None:
    key_pem, cert_pem = ca.issue_server(["localhost", "127.0.0.1", "::1"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("::1")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    cert.verify_directly_issued_by(ca.root)
    key = serialization.load_pem_private_key(key_pem, None)
    assert cert.public_key() == key.public_key()


def _key_ids(cert: x509.Certificate) -> tuple[bytes, bytes | None]:
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    return ski.digest, aki.key_identifier


def test_every_certificate_names_its_key_and_its_issuers_key(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey) -> None:
    root_ski, root_aki = _key_ids(ca.root)
    assert root_aki == root_ski  # self-signed
    device_ca_ski, device_ca_aki = _key_ids(ca.device_ca)
    assert device_ca_aki == root_ski
    server = x509.load_pem_x509_certificate(ca.issue_server(["localhost"])[1])
    assert _key_ids(server)[1] == root_ski
    device = issued(ca, make_csr(device_key, new_device_id("watch")))
    device_ski, device_aki = _key_ids(device)
    assert device_aki == device_ca_ski
    assert device_ski == x509.SubjectKeyIdentifier.from_public_key(
        device_key.public_key()).digest


def test_a_strict_validator_accepts_the_server_and_device_paths(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey) -> None:
    """cryptography's RFC 5280 verifier (sslyze's) refuses a path without key ids. A
    device is named by its CN (the broker's username), not a subjectAltName, which the web
    PKI's client policy would want: only that requirement is lifted for devices."""
    store = Store([ca.root])
    server = x509.load_pem_x509_certificate(ca.issue_server(["localhost"])[1])
    chain = PolicyBuilder().store(store).build_server_verifier(
        x509.DNSName("localhost")).verify(server, [])
    assert chain[-1] == ca.root
    device = issued(ca, make_csr(device_key, new_device_id("scale")))
    named_by_cn = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    verifier = PolicyBuilder().store(store).extension_policies(
        ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=named_by_cn
    ).build_client_verifier()
    assert verifier.verify(device, [ca.device_ca]).chain[-1] == ca.root


# --- the builder -------------------------------------------------------------------------


def test_builder_is_immutable_and_each_step_returns_a_new_builder(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey) -> None:
    base = ClientCertificateBuilder()
    short = base.validity(dt.timedelta(days=30))
    assert short is not base
    with pytest.raises(dataclasses.FrozenInstanceError):
        base._validity = dt.timedelta(days=1)  # type: ignore[misc]
    csr = make_csr(device_key, new_device_id("scale"))
    month = x509.load_pem_x509_certificate(short.csr(csr).sign(ca))
    year = x509.load_pem_x509_certificate(base.csr(csr).sign(ca))  # base kept its default
    assert month.not_valid_after_utc - month.not_valid_before_utc < dt.timedelta(days=31)
    assert year.not_valid_after_utc - year.not_valid_before_utc > DEVICE_VALIDITY


@pytest.mark.parametrize("step", [
    lambda b: b.validity(dt.timedelta(0)),
    lambda b: b.validity(dt.timedelta(days=-1)),
    lambda b: b.validity(dt.timedelta(days=100 * 365)),  # longer than the CA lives
    lambda b: b.issued_at(dt.datetime(2026, 1, 1)),  # naive: which zone?
    lambda b: b.csr(b"not a csr"),
    lambda b: b.csr(make_csr(new_key(), "svc-bridge")),  # a service id, as a device
    lambda b: b.for_service().csr(make_csr(new_key(), new_device_id("watch"))),
])
def test_each_field_is_checked_as_it_is_set(step: Any) -> None:
    with pytest.raises(CertificateRequestError):
        step(ClientCertificateBuilder())


def test_signing_without_a_csr_or_setting_it_twice_is_refused(
        ca: CertificateAuthority, device_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(CertificateRequestError, match="needs a CSR"):
        ClientCertificateBuilder().sign(ca)
    with_csr = ClientCertificateBuilder().csr(make_csr(device_key, new_device_id("watch")))
    with pytest.raises(CertificateRequestError, match="already set"):
        with_csr.csr(make_csr(device_key, new_device_id("watch")))


# --- an offline root ---------------------------------------------------------------------


def test_with_the_root_offline_the_online_ca_signs_clients_and_refuses_servers(
        tmp_path: Path, device_key: ec.EllipticCurvePrivateKey) -> None:
    online, offline = tmp_path / "pki", tmp_path / "offline"
    created = CertificateAuthority.load_or_create(online, offline_root=offline)
    assert not (online / "root.key").exists() and (offline / "root.key").exists()
    assert stat.S_IMODE((offline / "root.key").stat().st_mode) == 0o600
    loaded = CertificateAuthority.load_or_create(online)
    assert loaded.root_key is None and created.root == loaded.root
    cert = x509.load_pem_x509_certificate(
        loaded.issue_client(make_csr(device_key, new_device_id("watch"))))
    cert.verify_directly_issued_by(loaded.device_ca)
    loaded.device_ca.verify_directly_issued_by(loaded.root)
    with pytest.raises(CertificateRequestError, match="offline"):
        loaded.issue_server(["localhost"])
    assert loaded.crl([(cert.serial_number, dt.datetime.now(dt.UTC))])  # CRLs still signed
