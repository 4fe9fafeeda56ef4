"""Normalisation through the bridge into PostgreSQL: a sample a device sent twice is stored
once within a batch and read once across batches, artefact and clock flags are stored with
the samples, and the ledger keeps device time and the units values were converted from.

The bridge's ``process`` is called with paho messages built here (no broker in the path), so
that which messages share a batch is the test's choice, not the timing's."""

import datetime as dt
import json
import time

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from aiopaho import AsyncClient
from broker_bridge.bridge import Bridge
from tests.conftest import new_patient, new_watch
from vitals.normalise import Flag, raw_values
from vitals.senml import CONTENT_TYPE_JSON, encode_json

NOW = float(int(time.time()))
DAY = dt.timedelta(days=1)


def _message(device_id, seq, records):
    message = mqtt.MQTTMessage(topic=f"devices/{device_id}/telemetry".encode())
    message.payload = encode_json(f"{device_id}/", records)
    message.properties = Properties(PacketTypes.PUBLISH)
    message.properties.ContentType = CONTENT_TYPE_JSON
    message.properties.UserProperty = ("seq", str(seq))
    return message


def _hr(start, values):
    return [("heart_rate", "/min", start + i, v) for i, v in enumerate(values)]


def _bridge(core):
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="unused",
                                     protocol=mqtt.MQTTv5))
    return Bridge(client, core.store, core.registry, clock=lambda: NOW)


async def _device(core, pki, broker, tmp_path, name):
    patient, _, _ = await new_patient(core, name)
    watch = await new_watch(core, pki, broker, tmp_path, patient)
    return patient, watch.device_id


def _utc(seconds):
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


async def test_a_sample_repeated_by_a_later_message_of_the_batch_is_stored_once(
        core, pki, broker, tmp_path):
    patient, device = await _device(core, pki, broker, tmp_path, "n1")
    t0 = NOW - 100
    first = _message(device, 1, _hr(t0, [70.0, 71.0, 72.0, 73.0, 74.0]))
    again = _message(device, 2, _hr(t0 + 3, [73.0, 99.0, 75.0, 76.0]))  # 73 same, 99 not
    bridge = _bridge(core)
    await bridge.process([again, first])  # arrival order does not matter: seq 1 wins
    ledger = {r["seq"]: (r["samples"], r["rejected"]) for r in await core.pool.fetch(
        "SELECT seq, samples, rejected FROM ingested_messages")}
    assert ledger == {1: (5, 0), 2: (2, 2)}
    series = await core.store.read_series(patient, "heart_rate", _utc(t0 - 1), _utc(NOW))
    assert series.value.tolist() == [70.0, 71.0, 72.0, 73.0, 74.0, 75.0, 76.0]
    assert series.flags[4] & Flag.CONFLICT  # 74 and 99 at one time: kept, for review
    assert not series.flags[3] & Flag.CONFLICT
    # The refused copies are kept in quarantine with their reasons.
    detail = await core.pool.fetchval("SELECT detail FROM quarantine")
    assert "conflict" in detail and "duplicate" in detail
    assert bridge.stats.rejected_by_reason == {"duplicate": 1, "conflict": 1}


async def test_a_message_delivered_twice_in_one_batch_is_normalised_once(
        core, pki, broker, tmp_path):
    _, device = await _device(core, pki, broker, tmp_path, "n2")
    message = _message(device, 1, _hr(NOW - 100, [70.0, 71.0, 72.0]))
    bridge = _bridge(core)
    await bridge.process([message, message])
    assert await core.pool.fetchval("SELECT count(*) FROM quarantine") == 0
    assert (bridge.stats.messages, bridge.stats.duplicates, bridge.stats.rejected) == (1, 1, 0)
    assert await core.pool.fetchval("SELECT sum(samples) FROM segments") == 3


async def test_a_message_redelivered_in_a_later_batch_is_counted_once(
        core, pki, broker, tmp_path):
    """The counters say what was stored: a redelivery (an ack lost with a connection) adds
    a duplicate, not its samples, refusals and quarantine record a second time. `simulate
    --scenario artefacts` compares them with what its devices sent."""
    _, device = await _device(core, pki, broker, tmp_path, "n4")
    message = _message(device, 1, _hr(NOW - 100, [70.0, 0.0, 72.0]))  # 0 /min: impossible
    bridge = _bridge(core)
    await bridge.process([message])
    await bridge.process([message])
    assert await core.pool.fetchval("SELECT count(*) FROM quarantine") == 1
    stats = bridge.stats
    assert (stats.messages, stats.duplicates, stats.samples, stats.rejected,
            stats.quarantined) == (1, 1, 2, 1, 1)
    assert stats.rejected_by_reason == {"impossible_value": 1}
    assert +stats.quarantined_by_reason == {"rejected_samples": 1}  # + drops zero counts


async def test_a_replay_in_a_later_batch_is_stored_twice_and_read_once(
        core, pki, broker, tmp_path):
    patient, device = await _device(core, pki, broker, tmp_path, "n3")
    t0 = NOW - 100
    bridge = _bridge(core)
    await bridge.process([_message(device, 1, _hr(t0, [70.0, 71.0, 72.0]))])
    # After an offline period the device sends the same readings with a new number, one
    # of them different.
    await bridge.process([_message(device, 2, _hr(t0, [70.0, 71.5, 72.0]))])
    assert await core.pool.fetchval("SELECT sum(samples) FROM segments") == 6
    span = (_utc(t0 - 1), _utc(NOW))
    series = await core.store.read_series(patient, "heart_rate", *span)
    assert series.t_ms.tolist() == [int(t0 + i) * 1000 for i in range(3)]
    assert series.value.tolist() == [70.0, 71.0, 72.0]
    assert series.flags.tolist() == [0, Flag.CONFLICT, 0]
    by_source = await core.store.read_by_source(patient, "heart_rate", *span)
    assert by_source[device].value.tolist() == [70.0, 71.0, 72.0]


async def test_artefact_flags_are_stored_with_the_samples_and_nothing_is_dropped(
        core, pki, broker, tmp_path):
    patient, device = await _device(core, pki, broker, tmp_path, "n4")
    t0 = NOW - 100
    records = _hr(t0, [70.0, 71.0, 150.0, 72.0]) + [
        ("spo2", "%", t0 + i, v) for i, v in enumerate([97.0, 97.0, 85.0, 97.0])]
    await _bridge(core).process([_message(device, 1, records)])
    span = (_utc(t0 - 1), _utc(NOW))
    hr = await core.store.read_series(patient, "heart_rate", *span)
    spo2 = await core.store.read_series(patient, "spo2", *span)
    assert hr.value.tolist() == [70.0, 71.0, 150.0, 72.0]
    assert hr.flags.tolist() == [0, 0, Flag.HR_SPIKE, 0]
    assert spo2.flags.tolist() == [0, 0, Flag.SPO2_DIP, 0]


async def test_the_ledger_keeps_device_time_and_the_clock_offset(core, pki, broker, tmp_path):
    patient, device = await _device(core, pki, broker, tmp_path, "n5")
    bridge = _bridge(core)
    await bridge.process([_message(device, 1, _hr(NOW - 30, [70.0, 71.0])),
                          _message(device, 2, _hr(NOW + 90, [72.0]))])  # clock ahead
    rows = {r["seq"]: r for r in await core.pool.fetch(
        """SELECT seq, received_at, first_sample_at, last_sample_at,
                  extract(epoch FROM last_sample_at - received_at) AS offset_s
           FROM ingested_messages""")}
    assert rows[1]["received_at"] == _utc(NOW)
    assert (rows[1]["first_sample_at"], rows[1]["last_sample_at"]) == (
        _utc(NOW - 30), _utc(NOW - 29))
    assert (float(rows[1]["offset_s"]), float(rows[2]["offset_s"])) == (-29.0, 90.0)
    series = await core.store.read_series(patient, "heart_rate", _utc(NOW - 60),
                                          _utc(NOW + 120))
    assert series.flags.tolist() == [0, 0, Flag.CLOCK_AHEAD]


async def test_the_ledger_keeps_the_units_to_give_back_the_raw_values(
        core, pki, broker, tmp_path):
    patient, device = await _device(core, pki, broker, tmp_path, "n6")
    records = [("body_weight", "[lb_av]", NOW - 50, 181.4),
               ("body_temperature", "[degF]", NOW - 40, 98.6),
               ("heart_rate", "/min", NOW - 40, 64.0)]
    await _bridge(core).process([_message(device, 1, records),
                                 _message(device, 2, _hr(NOW - 10, [70.0]))])
    units = {r["seq"]: r["raw_units"] for r in await core.pool.fetch(
        "SELECT seq, raw_units FROM ingested_messages")}
    assert units[2] is None
    assert json.loads(units[1]) == {"body_weight": ["[lb_av]"],
                                    "body_temperature": ["[degF]"]}
    span = (_utc(NOW - 60), _utc(NOW))
    weight = await core.store.read_series(patient, "body_weight", *span)
    temperature = await core.store.read_series(patient, "body_temperature", *span)
    assert weight.value.tolist() != [181.4]  # stored in kilograms
    assert raw_values("body_weight", "[lb_av]", weight.value).tolist() == [181.4]
    assert raw_values("body_temperature", "[degF]", temperature.value).tolist() == [98.6]
    assert np.all(weight.flags == 0)
