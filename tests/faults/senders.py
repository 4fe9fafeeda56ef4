"""A device's side of the bargain, reduced to what fault tests need: every message keeps its
sequence number and is sent again until the broker acknowledges it."""

from __future__ import annotations

import asyncio
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient, MqttError
from broker_bridge.connection import tls_context
from firmware_sim.device import Watch
from vitals.senml import CONTENT_TYPE_JSON, encode_json

SAMPLES_PER_MESSAGE = 10


class PersistentSender:
    """Publishes seq 1..n for one watch; reconnects and resends whatever was not PUBACKed."""

    def __init__(self, watch: Watch, host: str, port: int) -> None:
        self.watch, self.host, self.port = watch, host, port
        self.acked = 0
        self.retries = 0
        self._client: AsyncClient | None = None
        # Each message covers its own seconds, as a real device's do: the bridge keeps one
        # sample per (device, metric, time), so overlapping windows would lose samples here.
        self._origin = time.time() - 3600

    async def _connected(self) -> AsyncClient:
        if self._client is None or not self._client.is_connected:
            flash = self.watch.flash
            context = tls_context(self.watch.broker.ca_file, flash.cert_file, flash.key_file)
            client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                             client_id=self.watch.device_id,
                                             protocol=mqtt.MQTTv5))
            client.paho.tls_set_context(context)
            await client.connect(self.host, self.port, timeout=5)
            self._client = client
        return self._client

    async def send(self, seq: int) -> None:
        start = self._origin + (seq - 1) * SAMPLES_PER_MESSAGE
        payload = encode_json(f"{self.watch.device_id}/", [
            ("heart_rate", "/min", start + i, 60.0 + (seq + i) % 30)
            for i in range(SAMPLES_PER_MESSAGE)])
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = CONTENT_TYPE_JSON
        props.UserProperty = ("seq", str(seq))
        while True:
            try:
                client = await self._connected()
                code = await client.publish(f"devices/{self.watch.device_id}/telemetry",
                                            payload, properties=props, timeout=5)
                if not code.is_failure:
                    self.acked += 1
                    return
            except MqttError:
                pass
            self.retries += 1
            await asyncio.sleep(0.2)

    async def send_all(self, first: int, last: int, pause_s: float = 0.0) -> None:
        for seq in range(first, last + 1):
            await self.send(seq)
            if pause_s:
                await asyncio.sleep(pause_s)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.disconnect()
