"""aiopaho when paho reports a socket that is closed already: paho does so when it collects
a client whose connection aiopaho ended (Client.__del__), and a ValueError there surfaced
as an unraisable exception in an unrelated test."""

import socket

import paho.mqtt.client as mqtt

from aiopaho import AsyncClient


async def test_unwatching_a_closed_socket_is_a_no_op() -> None:
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="x",
                                     protocol=mqtt.MQTTv5))
    closed = socket.socket()
    closed.close()  # fd -1: the event loop's selector refuses to look it up
    client._on_socket_unregister_write(client.paho, None, closed)
    client._on_socket_close(client.paho, None, closed)
    assert client._sock is None
