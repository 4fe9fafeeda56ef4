"""aiopaho's receive queue: full, it stops the reading of the socket instead of dropping a
message; taken below its resume mark, reading starts again (a real socket pair, watched by
the running loop's selector)."""

import asyncio
import socket

import paho.mqtt.client as mqtt

from aiopaho import AsyncClient


def _message(mid: int) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(mid, b"devices/x/telemetry")
    message.qos = 1
    return message


def _watched(sock: socket.socket) -> bool:
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    try:
        return bool(selector.get_key(sock.fileno()).events)
    except KeyError:
        return False


async def test_a_full_queue_stops_reading_and_keeps_every_message() -> None:
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="x",
                                     protocol=mqtt.MQTTv5, manual_ack=True), queue_size=8)
    ours, theirs = socket.socketpair()
    try:
        client._on_socket_open(client.paho, None, ours)
        assert _watched(ours)
        for mid in range(1, 12):  # paho may read past the limit in one loop_read: kept
            client._on_message(client.paho, None, _message(mid))
        assert client.messages.qsize() == 11 and client.pauses == 1
        assert not _watched(ours)

        taken = [client.messages.get_nowait() for _ in range(5)]  # 6 left: not below 6
        assert not _watched(ours)
        taken.append(await client.messages.get())  # 5 left: below the resume mark
        assert _watched(ours)
        taken += [client.messages.get_nowait() for _ in range(5)]
        assert [m.mid for m in taken] == list(range(1, 12))
        assert client.pauses == 1
    finally:
        client._on_socket_close(client.paho, None, ours)
        ours.close()
        theirs.close()


async def test_a_socket_opened_while_full_is_watched_once_the_queue_drains() -> None:
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="x",
                                     protocol=mqtt.MQTTv5, manual_ack=True), queue_size=2)
    for mid in (1, 2):
        client._on_message(client.paho, None, _message(mid))
    ours, theirs = socket.socketpair()
    try:
        client._on_socket_open(client.paho, None, ours)  # a reconnection, stale queue full
        assert not _watched(ours)
        while not client.messages.empty():
            client.messages.get_nowait()
        assert _watched(ours)
        await asyncio.sleep(0)  # the scheduled read finds paho unconnected: a no-op
    finally:
        client._on_socket_close(client.paho, None, ours)
        ours.close()
        theirs.close()
