"""asyncapi.yaml against the running parts: the bridge stores every example it gives, and a
device whose message is refused is told on its inbox, once, with the reason and its number,
through a real broker (mTLS) and a real bridge."""

import asyncio
import json
import time

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient
from broker_bridge.connection import tls_context
from tests import contract
from tests.conftest import new_patient, new_watch, wait_until
from vitals.senml import CONTENT_TYPE_CBOR, CONTENT_TYPE_JSON, encode_json


async def _device_client(watch, broker):
    """The device's own connection, subscribed to its inbox."""
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                     client_id=watch.device_id, protocol=mqtt.MQTTv5))
    client.paho.tls_set_context(
        tls_context(watch.broker.ca_file, watch.flash.cert_file, watch.flash.key_file))
    await client.connect(broker.host, broker.port)
    await client.subscribe(f"devices/{watch.device_id}/inbox", qos=1)
    return client


def _props(seq=None, epoch=None, content_type=CONTENT_TYPE_JSON):
    props = Properties(PacketTypes.PUBLISH)
    if content_type is not None:
        props.ContentType = content_type
    user = [(k, str(v)) for k, v in (("seq", seq), ("epoch", epoch)) if v is not None]
    if user:
        props.UserProperty = user
    return props


def _reading(offset_s=0.0, unit="/min", value=70.0, n=3):
    start = time.time() - 600 + offset_s
    return encode_json("x/", [("heart_rate", unit, start + i, value + i) for i in range(n)])


async def _stored(core, device_id):
    return await core.pool.fetchval(
        "SELECT count(*) FROM ingested_messages WHERE device_id = $1", device_id)


async def _inbox(client, timeout=5.0):
    """The next inbox message, as (payload, properties)."""
    message = await asyncio.wait_for(client.messages.get(), timeout)
    return message.payload, message.properties


async def test_the_bridge_stores_every_telemetry_example(core, pki, broker, bridge, tmp_path):
    patient, _, _ = await new_patient(core, "maker")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    client = await _device_client(watch, broker)
    examples = list(contract.examples("telemetry"))
    labels = contract.document()["x-cbor-labels"]
    for name, example in examples:
        records = example["payload"]
        spec = contract.message(name)
        if spec["contentType"] == CONTENT_TYPE_CBOR:
            payload = cbor2.dumps([{labels[k]: v for k, v in r.items()} for r in records])
        else:
            payload = json.dumps(records).encode()
        props = _props(content_type=spec["contentType"])
        props.UserProperty = list(example["headers"].items())
        code = await client.publish(f"devices/{watch.device_id}/telemetry", payload,
                                    properties=props)
        assert not code.is_failure

    async def all_stored():
        return await _stored(core, watch.device_id) == len(examples)
    await wait_until(all_stored)
    samples = await core.pool.fetchval(
        "SELECT sum(samples) FROM ingested_messages WHERE device_id = $1", watch.device_id)
    assert samples == sum(len([r for r in e["payload"] if "v" in r]) for _, e in examples)
    assert await core.pool.fetchval("SELECT count(*) FROM quarantine") == 0
    assert client.messages.empty()  # nothing refused: no notice
    await client.disconnect()


# (reason, what the device publishes: [(payload, properties)], the seq the notice names)
_SMALL = b'[{"n": "heart_rate", "u": "/min", "v": 60}]'
CASES = {
    "missing_sequence": ([(_reading(), _props())], None),
    "invalid_epoch": ([(_reading(), _props(3, "x"))], 3),
    "unsupported_content_type": ([(_reading(), _props(3, content_type="text/plain"))], 3),
    "malformed": ([(b'{"not": senml', _props(3))], 3),
    "oversized": ([(_SMALL + b" " * (256 * 1024 - len(_SMALL) + 1), _props(3))], 3),
    "unsupported_version": (
        [(b'[{"bver": 11, "n": "heart_rate", "u": "/min", "v": 60}]', _props(3))], 3),
    "sequence_reused": ([(_reading(0), _props(3)), (_reading(100), _props(3))], 3),
    "rejected_samples": ([(_reading(unit="furlong"), _props(3))], 3),
}


@pytest.mark.parametrize("reason", [*CASES, "device_provisioned"])
async def test_a_refused_message_gets_one_notice_with_its_reason_and_number(
        core, pki, broker, bridge, tmp_path, reason):
    patient, _, _ = await new_patient(core, "maker")
    watch = await new_watch(core, pki, broker, tmp_path,
                            None if reason == "device_provisioned" else patient)
    client = await _device_client(watch, broker)
    topic = f"devices/{watch.device_id}/telemetry"
    sends, seq = CASES.get(reason, ([(_reading(), _props(3))], 3))
    for payload, props in sends:
        assert not (await client.publish(topic, payload, properties=props)).is_failure
        await asyncio.sleep(0.3)  # a reuse must come after its first copy, in a later batch
    payload, props = await _inbox(client)
    body = json.loads(payload)
    contract.check("refusalNotice", body, content_type=props.ContentType)
    assert body["reason"] == reason
    assert body.get("seq") == seq
    if reason == "rejected_samples":
        assert body == {"refused": "samples", "reason": reason, "seq": 3, "epoch": 0,
                        "samples": {"unknown_unit": 3}}
    # Once: a message stored after it brings no second notice.
    if reason != "device_provisioned":
        await client.publish(topic, _reading(300), properties=_props(4))

        async def synced():
            return await _stored(core, watch.device_id) >= 1
        await wait_until(synced)
    await asyncio.sleep(0.5)
    assert client.messages.empty()
    await client.disconnect()


async def test_a_flood_of_bad_messages_yields_bounded_notices(core, pki, broker, bridge,
                                                            tmp_path):
    patient, _, _ = await new_patient(core, "maker")
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    client = await _device_client(watch, broker)
    topic = f"devices/{watch.device_id}/telemetry"
    await asyncio.gather(*(client.publish(topic, b"garbage", properties=_props(seq))
                           for seq in range(1, 301)))

    async def all_quarantined():
        return await core.pool.fetchval("SELECT count(*) FROM quarantine") == 300
    await wait_until(all_quarantined)
    await asyncio.sleep(1.0)
    notices = []
    while not client.messages.empty():
        payload, _ = await _inbox(client)
        notices.append(json.loads(payload))
    burst = 10  # NoticeConfig.burst, plus what trickles in during the test
    assert burst <= len(notices) <= burst + 3
    assert all(n["reason"] == "malformed" for n in notices)
    assert bridge.stats.refusal_notices["suppressed"] == 300 - len(notices)
    await client.disconnect()
