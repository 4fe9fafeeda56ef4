"""Device life cycle, pairing codes, the CRL and the broker's crlfile: pure parts."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from devices import pairing
from devices.broker_config import BrokerFiles, ServicesListener, mosquitto_conf
from devices.ca import CRL_VALIDITY, CertificateAuthority, make_csr, new_key
from devices.errors import InvalidTransition
from devices.identity import new_device_id
from devices.lifecycle import STATES, TRANSITIONS, check_transition


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("pki"))


# --- life cycle --------------------------------------------------------------------------

ALLOWED = {("provisioned", "paired"), ("provisioned", "revoked"), ("provisioned", "retired"),
           ("paired", "revoked"), ("paired", "retired"), ("revoked", "retired")}


@pytest.mark.parametrize(("current", "wanted"), list(itertools.product(STATES, STATES)))
def test_only_the_listed_transitions_are_allowed(current: str, wanted: str) -> None:
    if (current, wanted) in ALLOWED:
        check_transition("watch-000000000001", current, wanted)
    else:
        with pytest.raises(InvalidTransition) as caught:
            check_transition("watch-000000000001", current, wanted)
        message = str(caught.value)
        assert f"is {current}" in message and f"cannot become {wanted}" in message


def test_revoked_and_retired_never_lead_back_into_service() -> None:
    for final in ("revoked", "retired"):
        assert not TRANSITIONS[final] & {"provisioned", "paired"}


def test_an_unknown_state_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown device state"):
        check_transition("watch-000000000001", "paired", "lost")


# --- pairing codes -----------------------------------------------------------------------


def test_codes_are_random_grouped_and_50_bits() -> None:
    codes = {pairing.new_code() for _ in range(200)}
    assert len(codes) == 200
    for code in codes:
        assert len(code) == 11 and code[5] == "-"
        assert pairing.normalise(code) == code.replace("-", "")
    assert len(pairing._ALPHABET) ** pairing.CODE_LENGTH == 2**50


def test_typing_is_forgiven_but_not_a_different_code() -> None:
    salt = b"s" * 16
    stored = pairing.hash_code("K7QX2-9M4TD", salt)
    for typed in ("k7qx29m4td", " K7QX2 9M4TD ", "K7QX2-9M4TD"):
        assert pairing.matches(typed, salt, stored), typed
    assert pairing.matches("K7QX2-9M4T0", salt, stored) is False
    assert pairing.normalise("O1L0I-00000") == "0110100000"  # look-alikes, read as digits


@given(st.text(max_size=40))
def test_anything_typed_either_normalises_to_a_code_or_is_refused(text: str) -> None:
    canonical = pairing.normalise(text)
    assert canonical is None or (len(canonical) == 10
                                 and set(canonical) <= set(pairing._ALPHABET))


def test_the_hash_depends_on_the_salt_and_never_contains_the_code() -> None:
    code = pairing.new_code()
    a, b = pairing.hash_code(code, b"a" * 16), pairing.hash_code(code, b"b" * 16)
    assert a != b and len(a) == 32
    assert code.replace("-", "").encode() not in a
    assert not pairing.matches(code, b"a" * 16, b)
    assert not pairing.matches("not a code", b"a" * 16, a)


# --- CRL ---------------------------------------------------------------------------------


def test_the_crl_lists_the_revoked_serials_signed_by_the_device_ca(
        ca: CertificateAuthority) -> None:
    cert = x509.load_pem_x509_certificate(
        ca.issue_client(make_csr(new_key(), new_device_id("watch"))))
    at = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    crl = x509.load_pem_x509_crl(ca.crl([(cert.serial_number, at)]))
    assert crl.issuer == ca.device_ca.subject == cert.issuer
    assert crl.is_signature_valid(ca.device_ca.public_key())
    assert not crl.is_signature_valid(ca.root.public_key())
    revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert revoked is not None and revoked.revocation_date_utc == at
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number + 1) is None
    assert crl.next_update_utc is not None
    lifetime = crl.next_update_utc - dt.datetime.now(dt.UTC)
    assert CRL_VALIDITY - dt.timedelta(minutes=1) < lifetime <= CRL_VALIDITY


def test_an_empty_crl_is_valid_and_later_ones_number_higher(ca: CertificateAuthority) -> None:
    first = x509.load_pem_x509_crl(ca.crl([]))
    assert len(first) == 0 and first.is_signature_valid(ca.device_ca.public_key())
    number = first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    later = x509.load_pem_x509_crl(ca.crl([]))
    assert later.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number >= number


SERVICES = ServicesListener("127.0.0.1", 8884)


def test_the_broker_config_names_the_crl_only_once_it_exists(tmp_path: Path) -> None:
    files = BrokerFiles(tmp_path / "clients-ca.pem", tmp_path / "b.pem", tmp_path / "b.key",
                        tmp_path / "healthiot_acl.so", tmp_path / "data",
                        crl=tmp_path / "device-ca.crl")
    assert "crlfile" not in mosquitto_conf(files, bind="127.0.0.1", port=8883, services=SERVICES)
    files.crl.write_text("-----BEGIN X509 CRL-----\n")  # type: ignore[union-attr]
    conf = mosquitto_conf(files, bind="127.0.0.1", port=8883, services=SERVICES)
    assert f"crlfile {tmp_path / 'device-ca.crl'}" in conf.splitlines()
    no_crl = BrokerFiles(tmp_path / "c.pem", tmp_path / "b.pem", tmp_path / "b.key",
                         tmp_path / "healthiot_acl.so", tmp_path / "data")
    assert "crlfile" not in mosquitto_conf(no_crl, bind="127.0.0.1", port=8883, services=SERVICES)
