"""A device renewing its certificate over MQTT (the backend side: devices/renewal.py).

The device makes a new key, publishes a CSR on ``devices/<id>/csr`` over its one session
(the broker binds a device's client id to its certificate, so there is no second
connection; the readings it is sending go on around the exchange), and waits on its inbox
for the answer that carries the CSR's correlation data.
It checks that the certificate is for its new key and its id, then installs key and
certificate in its flash; its main connection uses them from its next connect, which a
device makes at once after renewing (firmware_sim/device.py; when it renews:
firmware_sim/renewal_policy.py). An answer that does not come is asked for again with the
same CSR (the backend answers a repeated CSR with the same certificate).

Like the rest of firmware_sim, it knows the protocol, not the backend's code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient
from firmware_sim.device import Broker, Flash
from firmware_sim.renewal_policy import ANSWER_TIMEOUT_S, ATTEMPTS

log = logging.getLogger(__name__)

CERTIFICATE_CONTENT_TYPE = "application/pem-certificate-chain"
CSR_CONTENT_TYPE = "application/pkcs10"


class RenewalFailed(Exception):
    """No certificate: refused (``reason`` from the backend) or no answer in time."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


def _new_request(device_id: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM)


def _check(cert_pem: bytes, key: ec.EllipticCurvePrivateKey, device_id: str) -> None:
    cert = x509.load_pem_x509_certificate(cert_pem)
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [device_id] or cert.public_key() != key.public_key():
        raise RenewalFailed("the certificate is not for this device's new key")


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def install(flash: Flash, key: ec.EllipticCurvePrivateKey, cert_pem: bytes) -> None:
    """Key then certificate, each replaced atomically. A connect between the two finds them
    mismatched, fails, and is retried (firmware_sim/device.py): never a half-written file."""
    _write(flash.key_file, key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), 0o600)
    _write(flash.cert_file, cert_pem, 0o644)


async def renew(flash: Flash, device_id: str, broker: Broker, *,
                answer_timeout_s: float = ANSWER_TIMEOUT_S, attempts: int = ATTEMPTS) -> bytes:
    """Renew the certificate of a device that is not connected otherwise, over a session
    of its own (under its id: it would replace a live one). Returns the new certificate
    (PEM), installed. Raises RenewalFailed (refused, or no answer after ``attempts``) or
    MqttError."""
    context = ssl.create_default_context(cafile=str(broker.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(flash.cert_file), str(flash.key_file))  # the current one
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id,
                         protocol=mqtt.MQTTv5)
    client.tls_set_context(context)
    conn = AsyncClient(client, queue_size=10)
    try:
        await conn.connect(broker.host, broker.port, keepalive=30)
        await conn.subscribe(f"devices/{device_id}/inbox", qos=1)
        return await renew_on(conn, conn.messages, flash, device_id,
                              answer_timeout_s=answer_timeout_s, attempts=attempts)
    finally:
        await conn.disconnect()


async def renew_on(conn: AsyncClient, answers: asyncio.Queue[mqtt.MQTTMessage], flash: Flash,
                   device_id: str, *, answer_timeout_s: float = ANSWER_TIMEOUT_S,
                   attempts: int = ATTEMPTS) -> bytes:
    """The renewal exchange on ``conn``, a connection subscribed to the device's inbox;
    ``answers`` brings what arrives there. Returns the new certificate, installed."""
    key, csr_pem = await asyncio.to_thread(_new_request, device_id)
    correlation = hashlib.sha256(csr_pem).digest()
    inbox = f"devices/{device_id}/inbox"
    for _ in range(attempts):
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = CSR_CONTENT_TYPE
        props.CorrelationData = correlation
        code = await conn.publish(f"devices/{device_id}/csr", csr_pem, qos=1,
                                  properties=props)
        if code.is_failure:
            raise RenewalFailed(f"CSR refused by the broker: {code}")
        cert_pem = await _answer(answers, inbox, correlation, answer_timeout_s)
        if cert_pem is not None:
            _check(cert_pem, key, device_id)
            await asyncio.to_thread(install, flash, key, cert_pem)
            log.info("certificate renewed", extra={"device": device_id})
            return cert_pem
    raise RenewalFailed(f"no answer after {attempts} attempts")


async def _answer(answers: asyncio.Queue[mqtt.MQTTMessage], inbox: str, correlation: bytes,
                  timeout: float) -> bytes | None:
    """The certificate that answers ``correlation``, None after ``timeout``; raises
    RenewalFailed for a refusal. Other inbox messages are not for this exchange."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        try:
            message = await asyncio.wait_for(answers.get(), left)
        except TimeoutError:
            return None
        props = message.properties
        if message.topic != inbox or getattr(props, "CorrelationData", None) != correlation:
            continue
        if getattr(props, "ContentType", None) == CERTIFICATE_CONTENT_TYPE:
            return bytes(message.payload)
        try:
            reason = str(json.loads(message.payload)["reason"])
        except (ValueError, KeyError, TypeError):
            reason = "unreadable answer"
        raise RenewalFailed(f"renewal refused: {reason}", reason)
    return None
