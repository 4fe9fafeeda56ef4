"""What the simulator sends and what the backend puts on a device's inbox conform to
asyncapi.yaml; refusal notices are rate-limited per device."""

import json
import random
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from broker_bridge.gaps import GapConfig, GapTracker, Resender, resend_request
from broker_bridge.notices import NoticeConfig, Notifier, Refusal, notice_payload
from devices import renewal
from devices.errors import RenewalRefused
from firmware_sim.device import Broker, Flash, telemetry_properties
from firmware_sim.models import MODELS
from tests import contract


class _Inbox:
    """A client that records what it publishes and answers PUBACK 0 (or ``fail``)."""

    def __init__(self, fail: bool = False) -> None:
        self.published: list[tuple[str, bytes, object]] = []
        self.fail = fail

    async def publish(self, topic, payload, *, qos=1, properties=None, timeout=10.0,
                      retain=False):
        self.published.append((topic, payload, properties))
        return ReasonCode(PacketTypes.PUBACK, identifier=0x87 if self.fail else 0)


def _check_inbox(name, payload, properties):
    contract.check(name, json.loads(payload), content_type=properties.ContentType)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_simulated_model_sends_conforming_telemetry(model, tmp_path):
    cls = MODELS[model]
    device_id = f"{model.replace('_', '')}-{random.getrandbits(32):08x}"
    device = cls(device_id, Flash(tmp_path / device_id), Broker("localhost", 1, tmp_path / "ca"),
                 interval_s=10.0, rng=random.Random(3))
    now = time.time()
    for start in range(0, 3600, 300):
        device.measure(now - 3600 + start, now - 3600 + start + 300)
    device.reset_counter()  # a new epoch: its numbering must conform too
    device.measure(now - 60, now)
    messages = list(device._outbox)
    assert messages
    for message in messages:
        props = telemetry_properties(message.seq, message.epoch)
        contract.check("senmlJson", json.loads(message.payload), dict(props.UserProperty),
                       props.ContentType)
    device.close()


@pytest.mark.parametrize(("ranges", "epoch"), [([(4, 6), (9, 9)], 0), ([(1, 1)], 7)])
def test_resend_requests_conform(ranges, epoch):
    contract.check("resendRequest", json.loads(resend_request(ranges, epoch)))


async def test_the_resender_publishes_conforming_requests():
    class Ledger:
        async def stored_below(self, firsts):
            return dict.fromkeys(firsts, 0)

        async def stored_in(self, ranges):
            return {}

    now = [0.0]
    resender = Resender(GapTracker(GapConfig(grace_s=0, check_every_s=0)), Ledger(),
                        clock=lambda: now[0])
    resender.seen([("watch-0123456789ab", 2, 1), ("watch-0123456789ab", 2, 5)])
    now[0] = 1.0
    client = _Inbox()
    assert await resender.check(client) == 1
    ((topic, payload, props),) = client.published
    assert topic == "devices/watch-0123456789ab/inbox"
    _check_inbox("resendRequest", payload, props)
    assert json.loads(payload) == {"resend": [[2, 4]], "epoch": 2}


@pytest.mark.parametrize("reason", contract.document()["components"]["schemas"]
                         ["renewalRefused"]["properties"]["reason"]["enum"])
def test_renewal_refusals_conform(reason):
    _, payload, props = renewal.answer("watch-0123456789ab", b"not a csr",
                                       RenewalRefused(reason), b"corr")
    _check_inbox("renewalRefused", payload, props)


def test_a_renewed_certificate_conforms():
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    _, payload, props = renewal.answer("watch-0123456789ab", b"x", pem, b"corr")
    contract.check("renewalCertificate", payload.decode(), content_type=props.ContentType)


@pytest.mark.parametrize("refusal", [
    Refusal("watch-0123456789ab", "missing_sequence"),
    Refusal("watch-0123456789ab", "invalid_epoch", 4),
    Refusal("watch-0123456789ab", "malformed", 4, 0),
    Refusal("watch-0123456789ab", "device_provisioned", 1, 3),
    Refusal("watch-0123456789ab", "rejected_samples", 9, 0,
            {"unknown_unit": 2, "outside_time_window": 1}),
], ids=lambda r: r.reason)
def test_refusal_notices_conform(refusal):
    contract.check("refusalNotice", json.loads(notice_payload(refusal, suppressed=3)))
    contract.check("refusalNotice", json.loads(notice_payload(refusal)))


async def test_a_flood_of_refusals_yields_a_burst_then_a_trickle_of_notices():
    now = [0.0]
    notifier = Notifier(NoticeConfig(burst=10, per_s=1 / 6), clock=lambda: now[0])
    client = _Inbox()
    flood = [Refusal("watch-0123456789ab", "malformed", seq) for seq in range(1, 10_001)]
    notifier.refused(flood)
    notifier.refused([Refusal("scale-00aa11bb22cc", "missing_sequence")])  # another device
    assert await notifier.send(client) == 11
    assert +notifier.stats == {"sent": 11, "suppressed": 9_990}
    now[0] = 60.0  # ten more tokens, and the next notice says how many were held back
    notifier.refused(flood[:20])
    await notifier.send(client)
    bodies = [json.loads(p) for t, p, _ in client.published if "watch" in t]
    assert len(bodies) == 20
    assert bodies[10]["suppressed"] == 9_990 and "suppressed" not in bodies[11]
    for _, payload, props in client.published:
        _check_inbox("refusalNotice", payload, props)


async def test_pending_notices_are_bounded_and_failures_are_counted_not_raised():
    notifier = Notifier(NoticeConfig(max_pending=5))
    notifier.refused(Refusal(f"watch-{i:012x}", "malformed") for i in range(50))
    assert notifier.pending == 5 and notifier.stats["suppressed"] == 45
    assert await notifier.send(_Inbox(fail=True)) == 0
    assert notifier.stats["failed"] == 5 and notifier.pending == 0


def test_forgotten_buckets_are_bounded():
    notifier = Notifier(NoticeConfig(max_devices=100))
    notifier.refused(Refusal(f"watch-{i:012x}", "malformed") for i in range(1_000))
    assert len(notifier._buckets) == 100
