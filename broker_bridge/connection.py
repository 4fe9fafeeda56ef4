"""The bridge's MQTT v5 client: mTLS, persistent session, manual acks, bounded inflight."""

from __future__ import annotations

import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import LeanClient

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our queue through a week-long outage


def tls_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A client context: trusts only ``ca_file``, presents our certificate, TLS 1.2+."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


def bridge_client(client_id: str, context: ssl.SSLContext, *,
                  queue_size: int = 10_000) -> LeanClient:
    """The bridge's client: our own lean MQTT v5 receive path (aiopaho/lean.py), not paho,
    whose per-message cost (TLS reads, dispatch, property objects and the garbage they make)
    was a fifth of the bridge's; devices and the other services keep paho."""
    return LeanClient(client_id, context, queue_size=queue_size)


def make_client(client_id: str, context: ssl.SSLContext) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5, manual_ack=True)
    client.tls_set_context(context)
    return client


def connect_properties(receive_maximum: int) -> Properties:
    """CONNECT properties: a durable session, and at most ``receive_maximum`` unacked
    messages in flight to us, which is what bounds the bridge's memory."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    props.ReceiveMaximum = receive_maximum
    return props
