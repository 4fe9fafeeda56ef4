"""Ending a revoked device's live MQTT session.

Mosquitto checks the CRL only at the handshake, so a session that is up when a device is
revoked stays up; and the dynamic-security plugin's kick does not apply to certificate
logins. What does work with any MQTT broker: a new connection under the same client id
takes the session over (MQTT v5 sends the old one DISCONNECT 0x8E, "session taken over").
So a service identity connects under the device's id with a clean start and no session
expiry, then leaves: the device's connection is closed, its session discarded, and its
reconnect is refused by the CRL, which the revoker installs first.

No ACL entry is needed: the takeover connection neither publishes nor subscribes. Both of
the client ids a device may use are taken over (its renewal connection's too); a device
under any other id is reported by devices/takeover.py, and the bridge stores nothing from
a revoked device whatever connection it comes through.
"""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient
from devices.identity import client_ids, is_device_id

log = logging.getLogger(__name__)

TAKEOVER_TIMEOUT_S = 5.0  # the whole revocation must take effect within 5 s (issue 4)


class SessionTakeover:
    """Callable ``await takeover(device_id)``; raises aiopaho.MqttError when the broker is
    unreachable. ``context`` presents a service certificate (CN ``svc-...``)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, *,
                 timeout_s: float = TAKEOVER_TIMEOUT_S) -> None:
        self._host, self._port = host, port
        self._context = context
        self._timeout_s = timeout_s

    async def __call__(self, device_id: str) -> None:
        if not is_device_id(device_id):
            raise ValueError(f"{device_id!r} is not a device id")  # never a service's id
        for client_id in client_ids(device_id):
            await self._take_over(client_id)
        log.info("live session ended", extra={"device": device_id})

    async def _take_over(self, client_id: str) -> None:
        client = AsyncClient(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                         protocol=mqtt.MQTTv5), queue_size=1)
        client.paho.tls_set_context(self._context)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0  # the taken-over session ends with our connection
        await client.connect(self._host, self._port, clean_start=True, properties=props,
                             timeout=self._timeout_s)
        await client.disconnect(timeout=self._timeout_s)
