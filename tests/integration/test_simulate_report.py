"""The simulator's report against a real database: a device with one message lost and
another stored twice, under two sequence numbers, reports both (the ledger's counts alone
see neither: six samples acknowledged, six stored).

The bridge's ``process`` is called with paho messages built from the device's outbox (no
broker in the path), so that what is stored, and under which number, is the test's choice."""

import asyncio
import random
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient
from broker_bridge.bridge import Bridge
from devices.identity import new_device_id
from firmware_sim.device import Broker, Flash, enrol
from firmware_sim.models import Scale
from firmware_sim.outbox import Message
from healthiot import simulate
from tests.conftest import new_patient
from vitals.senml import CONTENT_TYPE_JSON

NOW = float(int(time.time()))


def _published(device_id: str, seq: int, payload: bytes) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(topic=f"devices/{device_id}/telemetry".encode())
    message.payload = payload
    message.properties = Properties(PacketTypes.PUBLISH)
    message.properties.ContentType = CONTENT_TYPE_JSON
    message.properties.UserProperty = ("seq", str(seq))
    return message


async def _scale_in_pounds(core, pki, tmp_path: Path) -> Scale:  # type: ignore[no-untyped-def]
    """A registered scale that weighs in lb (its weights are converted to kg when stored)."""
    patient, _, _ = await new_patient(core, "report")
    device_id = new_device_id("scale")
    flash = Flash(tmp_path / device_id)

    async def issue(csr: bytes) -> bytes:
        return await asyncio.to_thread(pki.ca.issue_client, csr)

    await enrol(flash, device_id, issue)
    await core.registry.register(device_id, model="scale", serial=device_id,
                                 cert_pem=flash.cert_file.read_bytes(), patient_id=patient)
    # Port 1: nothing listens; the test publishes nothing.
    scale = Scale(device_id, flash, Broker("127.0.0.1", 1, pki.ca.ca_file), interval_s=60.0,
                  rng=random.Random(7), kg=81.0, pounds=True)
    scale.ledger.payloads = []  # as simulate's fleet records them
    return scale


def _three_acknowledged(scale: Scale) -> list[Message]:
    """Three weighings a minute apart, each taken by the broker."""
    sent = []
    for i in range(3):
        message = scale.measure(NOW - 300 + 60 * i, NOW - 240 + 60 * i)
        assert message is not None
        scale.ledger.acknowledged(message)
        sent.append(message)
    return sent


def _bridge(core) -> Bridge:  # type: ignore[no-untyped-def]
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="unused",
                                     protocol=mqtt.MQTTv5))
    return Bridge(client, core.store, core.registry, clock=lambda: NOW)


async def test_a_lost_message_and_a_reading_stored_twice_do_not_cancel_out(
        core, pki, tmp_path):
    scale = await _scale_in_pounds(core, pki, tmp_path)
    try:
        first, lost, third = _three_acknowledged(scale)
        bridge = _bridge(core)
        device = scale.device_id
        await bridge.process([_published(device, first.seq, first.payload),
                              _published(device, third.seq, third.payload)])
        # The lost message's number arrives carrying the first one's readings, in a later
        # batch: the ledger counts three messages and six samples, as acknowledged.
        await bridge.process([_published(device, lost.seq, first.payload)])

        [by_counts] = await simulate._compare([scale], core, samples=False)
        assert (by_counts.stored_messages, by_counts.stored) == (3, 6)
        assert (by_counts.lost, by_counts.dup) == (0, 0)  # what the report said before

        [report] = await simulate._compare([scale], core)
        assert (report.missing, report.extra) == (2, 2)
        assert (report.lost, report.dup) == (2, 2)  # weight and body fat, each way
    finally:
        scale.close()


async def test_a_device_stored_exactly_as_sent_reports_nothing_lost_or_doubled(
        core, pki, tmp_path):
    scale = await _scale_in_pounds(core, pki, tmp_path)
    try:
        sent = _three_acknowledged(scale)
        bridge = _bridge(core)
        await bridge.process([_published(scale.device_id, m.seq, m.payload) for m in sent])
        # A redelivery of the same number is skipped by storage: no duplicate either.
        await bridge.process([_published(scale.device_id, sent[0].seq, sent[0].payload)])
        [report] = await simulate._compare([scale], core)
        assert (report.missing, report.extra, report.lost, report.dup) == (0, 0, 0, 0)
    finally:
        scale.close()
