"""Ending a revoked device's live MQTT sessions.

Mosquitto checks the CRL only at the handshake, so a session that is up when a device is
revoked stays up. The broker's policy plugin (devices/broker_plugin/healthiot_acl.c) ends
them: the revoker service publishes the device id on its control topic, and the plugin disconnects
every session of that identity, under whatever client id. The revoker installs the CRL
first, so the device's reconnect fails at the handshake (or, when only an old certificate
was revoked, succeeds with the new one).
"""

from __future__ import annotations

import logging
import secrets
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from aiopaho import AsyncClient, MqttError
from devices.broker_config import DISCONNECT_CONTROL_TOPIC, REVOKER_IDENTITY
from devices.identity import is_device_id

log = logging.getLogger(__name__)

END_SESSION_TIMEOUT_S = 5.0  # the whole revocation must take effect within 5 s (issue 4)


class SessionEnder:
    """Callable ``await end_sessions(device_id)``; raises aiopaho.MqttError when the broker
    is unreachable or refuses. ``context`` presents the revoker's service certificate; the
    broker address is its services' listener."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, *,
                 timeout_s: float = END_SESSION_TIMEOUT_S) -> None:
        self._host, self._port = host, port
        self._context = context
        self._timeout_s = timeout_s

    async def __call__(self, device_id: str) -> None:
        if not is_device_id(device_id):
            raise ValueError(f"{device_id!r} is not a device id")  # never a service's id
        client_id = f"{REVOKER_IDENTITY}-{secrets.token_hex(4)}"  # several revokers at once
        client = AsyncClient(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                         protocol=mqtt.MQTTv5), queue_size=1)
        client.paho.tls_set_context(self._context)
        await client.connect(self._host, self._port, timeout=self._timeout_s)
        try:
            code = await client.publish(DISCONNECT_CONTROL_TOPIC, device_id.encode(), qos=1,
                                        timeout=self._timeout_s)
            if code.is_failure:
                raise MqttError(f"the broker refused to end the sessions: {code}")
        finally:
            await client.disconnect(timeout=self._timeout_s)
        log.info("live sessions ended", extra={"device": device_id})
