"""paho-mqtt 2.x driven from an asyncio event loop.

A leaf package (it imports nothing else of healthiot) shared by the bridge and the simulated
firmware. Like aiomqtt and Home Assistant's client, paho's socket is watched with
``add_reader``/``add_writer`` and ``loop_misc`` runs on a timer, so every paho callback runs in
the event loop thread; unlike aiomqtt it keeps paho's ``manual_ack``.

``LeanClient`` (aiopaho/lean.py) has the same interface without paho, over a codec of its
own (aiopaho/mqtt5.py) for the subset of MQTT v5 the bridge speaks: its receive path.
"""

from aiopaho.client import AsyncClient, MqttError, MqttTimeout
from aiopaho.lean import LeanClient
from aiopaho.mqtt5 import Message, ProtocolError
from aiopaho.tasks import stop_task

# Either client, where only what both offer is used (publishing a notice, say).
Client = AsyncClient | LeanClient

__all__ = ["AsyncClient", "Client", "LeanClient", "Message", "MqttError", "MqttTimeout",
           "ProtocolError", "stop_task"]
