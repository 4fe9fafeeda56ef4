"""aiopaho's batch of PUBACKs: the bytes paho's own ``ack`` would write for each message, in
order, queued as one packet (one TLS record, one write); QoS 2 and QoS 0 as paho does."""

import paho.mqtt.client as mqtt

from aiopaho import AsyncClient


def _client(manual_ack: bool = True) -> AsyncClient:
    return AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="x",
                                   protocol=mqtt.MQTTv5, manual_ack=manual_ack))


def _message(mid: int, qos: int = 1) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(mid, b"devices/x/telemetry")
    message.qos = qos
    return message


def _queued(client: AsyncClient) -> list[bytes]:
    return [bytes(p["packet"]) for p in client.paho._out_packet]


async def test_a_batch_of_acks_is_one_packet_of_pahos_own_bytes() -> None:
    batch = [_message(mid) for mid in (1, 2, 300, 65535, 7)]
    one_by_one = _client()
    for message in batch:
        one_by_one.ack(message)
    batched = _client()
    batched.ack_many(batch)
    assert _queued(batched) == [b"".join(_queued(one_by_one))]
    assert len(_queued(one_by_one)) == 5


async def test_qos_2_and_0_are_acked_as_paho_acks_them() -> None:
    batch = [_message(1), _message(2, qos=2), _message(3, qos=0), _message(4)]
    one_by_one = _client()
    for message in batch:
        one_by_one.ack(message)
    batched = _client()
    batched.ack_many(batch)
    pubcomp, pubacks = _queued(batched)
    assert pubcomp == _queued(one_by_one)[1]
    assert pubacks == _queued(one_by_one)[0] + _queued(one_by_one)[2]


async def test_nothing_is_queued_when_paho_acks_by_itself() -> None:
    client = _client(manual_ack=False)
    client.ack_many([_message(1), _message(2)])
    assert _queued(client) == []
