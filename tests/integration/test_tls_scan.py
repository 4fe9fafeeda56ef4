"""A TLS scan (sslyze) of the broker's and the API's listeners: TLS 1.2+ and AEAD only.

sslyze brings its own OpenSSL builds (one still speaking SSL 2.0/3.0), so every protocol and
every cipher suite it knows is really offered, one at a time, whatever the system OpenSSL
would allow. It reports a suite as accepted once the server answers with it, which happens
before the server asks for the client's certificate; it presents the bridge's certificate
anyway, so the handshakes complete as a device's would. A control listener configured the
weak way proves that the scan finds what it looks for.
"""

from __future__ import annotations

import asyncio
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sslyze import (
    CertificateInfoExtraArgument,
    ClientAuthenticationCredentials,
    ScanCommand,
    ScanCommandAttemptStatusEnum,
    ScanCommandsExtraArguments,
    Scanner,
    ServerConnectivityStatusEnum,
    ServerNetworkConfiguration,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanResult,
)

from healthiot.services import server_tls
from tests.conftest import BrokerAddress, Pki

OLD_PROTOCOLS = {
    "SSL 2.0": ScanCommand.SSL_2_0_CIPHER_SUITES,
    "SSL 3.0": ScanCommand.SSL_3_0_CIPHER_SUITES,
    "TLS 1.0": ScanCommand.TLS_1_0_CIPHER_SUITES,
    "TLS 1.1": ScanCommand.TLS_1_1_CIPHER_SUITES,
}
CURRENT_PROTOCOLS = {
    "TLS 1.2": ScanCommand.TLS_1_2_CIPHER_SUITES,
    "TLS 1.3": ScanCommand.TLS_1_3_CIPHER_SUITES,
}
_AEAD_MARKS = ("_GCM_", "_CHACHA20_POLY1305_", "_CCM")  # in IANA suite names


def _is_aead(suite_name: str) -> bool:
    return any(mark in suite_name + "_" for mark in _AEAD_MARKS)


def _scan(port: int, pki: Pki, *, certificate: bool = False) -> ServerScanResult:
    """The protocol and suite scans, or with ``certificate`` the certificate scan alone:
    sslyze validates the served chain against the development CA (and its own stores)."""
    config = ServerNetworkConfiguration(
        tls_server_name_indication="localhost",
        tls_client_auth_credentials=ClientAuthenticationCredentials(pki.bridge_cert,
                                                                    pki.bridge_key))
    location = ServerNetworkLocation("localhost", port, "127.0.0.1")
    if certificate:
        request = ServerScanRequest(
            server_location=location, network_configuration=config,
            scan_commands={ScanCommand.CERTIFICATE_INFO},
            scan_commands_extra_arguments=ScanCommandsExtraArguments(
                certificate_info=CertificateInfoExtraArgument(custom_ca_file=pki.ca.ca_file)))
    else:
        request = ServerScanRequest(
            server_location=location, network_configuration=config,
            scan_commands={*OLD_PROTOCOLS.values(), *CURRENT_PROTOCOLS.values()})
    scanner = Scanner(per_server_concurrent_connections_limit=4)  # 2 cores, shared
    scanner.queue_scans([request])
    (result,) = scanner.get_results()
    return result


def _findings(result: ServerScanResult) -> tuple[list[str], int]:
    """(what is wrong, how many non-AEAD TLS 1.2 suites were offered and refused). Fails
    the test when the scan itself did not run: a scan that did not run proves nothing."""
    assert result.connectivity_status == ServerConnectivityStatusEnum.COMPLETED, \
        result.connectivity_error_trace
    assert result.scan_result is not None
    found: list[str] = []
    refused_cbc = 0
    for protocol, command in {**OLD_PROTOCOLS, **CURRENT_PROTOCOLS}.items():
        attempt = getattr(result.scan_result, command.value)
        assert attempt.status == ScanCommandAttemptStatusEnum.COMPLETED, \
            f"{protocol}: {attempt.error_reason} {attempt.error_trace}"
        accepted = [s.cipher_suite.name for s in attempt.result.accepted_cipher_suites]
        if protocol in OLD_PROTOCOLS:
            found += [f"{protocol} accepted with {name}" for name in accepted]
        else:
            found += [f"{protocol} accepted non-AEAD {name}" for name in accepted
                      if not _is_aead(name)]
        if protocol == "TLS 1.2":
            refused_cbc = sum(not _is_aead(s.cipher_suite.name)
                              for s in attempt.result.rejected_cipher_suites)
    return found, refused_cbc


async def test_the_broker_listener_accepts_only_tls12_or_13_with_aead_suites(
        broker: BrokerAddress, pki: Pki) -> None:
    found, refused_cbc = _findings(await asyncio.to_thread(_scan, broker.port, pki))
    assert found == []
    assert refused_cbc >= 50  # the scan really offered the CBC suites, one at a time


@pytest.fixture
async def api_listener(pki: Pki) -> AsyncIterator[int]:
    """A listener with the API's TLS context (healthiot.services.server_tls)."""
    async def close_at_once(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0,
                                        ssl=server_tls(pki.server_cert, pki.server_key))
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_the_api_listener_accepts_only_tls12_or_13_with_aead_suites(
        api_listener: int, pki: Pki) -> None:
    found, refused_cbc = _findings(await asyncio.to_thread(_scan, api_listener, pki))
    assert found == []
    assert refused_cbc >= 50


def _validation_against_the_development_ca(result: ServerScanResult, pki: Pki
                                           ) -> list[str]:
    """For each certificate deployment: None when sslyze validated the path up to the
    development root, else its validation error."""
    assert result.connectivity_status == ServerConnectivityStatusEnum.COMPLETED, \
        result.connectivity_error_trace
    assert result.scan_result is not None
    attempt = result.scan_result.certificate_info
    assert attempt.status == ScanCommandAttemptStatusEnum.COMPLETED, \
        "".join(attempt.error_trace.format()) if attempt.error_trace else attempt.error_reason
    outcomes = []
    for deployment in attempt.result.certificate_deployments:
        (ours,) = [v for v in deployment.path_validation_results
                   if v.trust_store.path == pki.ca.ca_file]
        outcomes.append("valid" if ours.was_validation_successful else
                        f"refused: {ours.validation_error}")
    return outcomes


# sslyze's bundled trust stores (Mozilla's, Apple's...) hold a root with a negative serial.
BUNDLED_STORES_WARNING = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number which wasn't positive:"
    "cryptography.utils.CryptographyDeprecationWarning")


@BUNDLED_STORES_WARNING
async def test_sslyze_validates_the_brokers_certificate_path_to_the_development_ca(
        broker: BrokerAddress, pki: Pki) -> None:
    result = await asyncio.to_thread(_scan, broker.port, pki, certificate=True)
    assert _validation_against_the_development_ca(result, pki) == ["valid"]


@BUNDLED_STORES_WARNING
async def test_sslyze_validates_the_apis_certificate_path_to_the_development_ca(
        api_listener: int, pki: Pki) -> None:
    result = await asyncio.to_thread(_scan, api_listener, pki, certificate=True)
    assert _validation_against_the_development_ca(result, pki) == ["valid"]


@pytest.fixture
async def weak_listener(pki: Pki, tmp_path: Path) -> AsyncIterator[int]:
    """The control: what Mosquitto's defaults would look like (CBC allowed, TLS 1.0 on)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # deprecated, and deliberately so here
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ALL:!aNULL:@SECLEVEL=0")
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(str(pki.ca.clients_ca_file))
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))

    async def close_at_once(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_the_scan_reports_cbc_suites_and_old_protocols_where_they_are_allowed(
        weak_listener: int, pki: Pki) -> None:
    found, _ = _findings(await asyncio.to_thread(_scan, weak_listener, pki))
    print("\n" + "\n".join(found))
    assert any(f.startswith("TLS 1.2 accepted non-AEAD") and "_CBC_" in f for f in found)
    assert any(f.startswith("TLS 1.0 accepted") for f in found)
