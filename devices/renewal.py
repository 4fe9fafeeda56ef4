"""Certificate renewal over MQTT: a CSR on ``devices/<id>/csr``, the answer on the inbox.

A device makes a new key, publishes a CSR for its own id (the ACL lets it publish only on
its own CSR topic, so the topic names the certificate that sent it) and keeps sending
readings on its main connection meanwhile. The renewer signs when the CSR's CN is that id,
the device is paired and its current certificate is valid and not revoked; it records the
certificate in the device's history before publishing it, so every certificate that ever
left the CA can be revoked. The device uses the new certificate from its next connection;
the old one can then be revoked alone (Registry.revoke_certificate).

The answer carries the request's correlation data, and a refusal is an answer too (JSON,
with a reason), so a device never waits for nothing. An answer can still be lost (a
client-id takeover discards queued inbox messages): the device sends the same CSR again and
gets the same certificate back, not a new one.

    inbox answer: content type application/pem-certificate-chain, the PEM certificate
                  content type application/json, {"renewal": "refused", "reason": "..."}
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import random
import socket
import ssl

import asyncpg
import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient, MqttError
from devices.broker_config import CSR_FILTER, RENEWER_IDENTITY, inbox_topic
from devices.ca import CertificateAuthority
from devices.errors import CertificateRequestError, RenewalRefused
from devices.identity import is_device_id
from devices.registry import Registry

log = logging.getLogger(__name__)

CERTIFICATE_CONTENT_TYPE = "application/pem-certificate-chain"
REFUSAL_CONTENT_TYPE = "application/json"
SHARED_CSR = f"$share/renew/{CSR_FILTER}"  # several renewers share the requests
RENEWALS_PER_DAY = 3  # fresh certificates per device per 24 h: a loop must not fill the CRL
MAX_CSR_BYTES = 4096  # a P-256 CSR in PEM is under 600 bytes
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 30.0
POLL_S = 1.0  # how often the receive loop notices a lost connection


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def csr_digest(csr_pem: bytes) -> bytes:
    """SHA-256 of the CSR's DER form: one request, however its PEM is wrapped. Raises
    RenewalRefused("bad_csr") for what is not a CSR."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise RenewalRefused("bad_csr", "not a PEM CSR") from None
    return hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).digest()


class CertificateRenewer:
    """The decision and the issuance, without MQTT: ``await renew(device_id, csr_pem)``."""

    def __init__(self, registry: Registry, ca: CertificateAuthority, pool: asyncpg.Pool, *,
                 per_day: int = RENEWALS_PER_DAY) -> None:
        self._registry = registry
        self._ca = ca
        self._pool = pool
        self._per_day = per_day

    async def renew(self, device_id: str, csr_pem: bytes, *,
                    now: dt.datetime | None = None) -> bytes:
        """The certificate (PEM) for ``device_id``'s CSR; the same one again for a CSR
        already answered. Raises RenewalRefused with the reason."""
        now = now or _now()
        if len(csr_pem) > MAX_CSR_BYTES or not is_device_id(device_id):
            raise RenewalRefused("bad_csr", "too large, or not a device's topic")
        digest = csr_digest(csr_pem)
        csr = x509.load_pem_x509_csr(csr_pem)
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [str(n.value) for n in names] != [device_id]:
            raise RenewalRefused("bad_csr", "the CN is not the device's id")
        row = await self._pool.fetchrow(
            """SELECT d.state, d.patient_id, d.cert_not_after, c.revoked_at
               FROM devices d LEFT JOIN device_certificates c ON c.serial = d.cert_serial
               WHERE d.id = $1""", device_id)
        if row is None:
            raise RenewalRefused("unknown_device")
        if row["state"] != "paired" or row["patient_id"] is None:
            raise RenewalRefused("not_paired", row["state"])
        if row["revoked_at"] is not None or row["cert_not_after"] is None \
                or row["cert_not_after"] <= now:
            raise RenewalRefused("certificate_invalid", "the current one is revoked or expired")
        answered = await self._pool.fetchrow(
            "SELECT device_id, cert_pem FROM certificate_renewals WHERE csr_sha256 = $1",
            digest)
        if answered is not None:
            if answered["device_id"] != device_id:  # cannot happen: the CN is in the digest
                raise RenewalRefused("bad_csr", "answered for another device")
            return str(answered["cert_pem"]).encode()
        recent = await self._pool.fetchval(
            "SELECT count(*) FROM certificate_renewals WHERE device_id = $1 AND issued_at > $2",
            device_id, now - dt.timedelta(days=1))
        if recent >= self._per_day:
            raise RenewalRefused("too_many_renewals", f"{recent} in the last 24 h")
        try:
            cert_pem = await asyncio.to_thread(self._ca.issue_client, csr_pem)
        except CertificateRequestError as exc:
            raise RenewalRefused("bad_csr", str(exc)) from None
        # In the history (hence revocable) before anyone can see it.
        await self._registry.add_certificate(device_id, cert_pem)
        serial = format(x509.load_pem_x509_certificate(cert_pem).serial_number, "x")
        await self._pool.execute(
            """INSERT INTO certificate_renewals (csr_sha256, device_id, serial, cert_pem)
               VALUES ($1, $2, $3, $4) ON CONFLICT (csr_sha256) DO NOTHING""",
            digest, device_id, serial, cert_pem.decode())
        log.info("certificate renewed", extra={"device": device_id, "serial": serial})
        return cert_pem


def answer(device_id: str, csr_pem: bytes, result: bytes | RenewalRefused,
           correlation: bytes | None) -> tuple[str, bytes, Properties]:
    """The inbox message for ``result``: (topic, payload, properties)."""
    props = Properties(PacketTypes.PUBLISH)
    try:
        props.CorrelationData = correlation or csr_digest(csr_pem)
    except RenewalRefused:
        props.CorrelationData = hashlib.sha256(csr_pem).digest()
    if isinstance(result, RenewalRefused):
        props.ContentType = REFUSAL_CONTENT_TYPE
        payload = json.dumps({"renewal": "refused", "reason": result.reason}).encode()
    else:
        props.ContentType = CERTIFICATE_CONTENT_TYPE
        payload = result
    return inbox_topic(device_id), payload, props


class RenewalService:
    """The MQTT side: subscribes to every device's CSR topic (shared), answers each on the
    device's inbox, acknowledges after answering. ``context`` presents the renewer's
    service certificate (CN ``svc-renewer``)."""

    def __init__(self, renewer: CertificateRenewer, host: str, port: int,
                 context: ssl.SSLContext, *, client_id: str | None = None) -> None:
        self._renewer = renewer
        self._host, self._port = host, port
        self._context = context
        # Its own id per process: renewers sharing the subscription must not take each
        # other's sessions over (and it keeps no session to resume).
        self._client_id = client_id or \
            f"{RENEWER_IDENTITY}-{socket.gethostname()}-{os.getpid()}"
        self.answered = 0
        self.refused = 0

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Until cancelled, reconnecting with jittered backoff when the broker goes."""
        delay = RECONNECT_MIN_S
        while True:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self._client_id,
                                 protocol=mqtt.MQTTv5, manual_ack=True)
            client.tls_set_context(self._context)
            conn = AsyncClient(client, queue_size=100)
            try:
                await conn.connect(self._host, self._port, keepalive=30)
                await conn.subscribe(SHARED_CSR, qos=1)
                delay = RECONNECT_MIN_S
                if ready is not None:
                    ready.set()
                await self._serve(conn)
            except MqttError as exc:
                log.warning("renewer connection lost", extra={"error": str(exc)})
            finally:
                await conn.disconnect()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _serve(self, conn: AsyncClient) -> None:
        while conn.is_connected:
            try:
                message = await asyncio.wait_for(conn.messages.get(), POLL_S)
            except TimeoutError:
                continue
            await self._handle(conn, message)

    async def _handle(self, conn: AsyncClient, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        device_id = parts[1] if len(parts) == 3 else ""
        csr_pem = bytes(message.payload)
        props = message.properties
        correlation = getattr(props, "CorrelationData", None) if props else None
        result: bytes | RenewalRefused
        try:
            result = await self._renewer.renew(device_id, csr_pem)
            self.answered += 1
        except RenewalRefused as exc:
            result = exc
            self.refused += 1
            log.warning("renewal refused", extra={"device": device_id, "reason": exc.reason})
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            # No answer: the device asks again after its timeout, with the same CSR.
            log.exception("renewal not answered", extra={"device": device_id})
            return
        if is_device_id(device_id):
            topic, payload, answer_props = answer(device_id, csr_pem, result, correlation)
            await conn.publish(topic, payload, qos=1, properties=answer_props)
        conn.ack(message)
