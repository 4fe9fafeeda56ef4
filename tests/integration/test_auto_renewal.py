"""Devices renew their certificate by themselves (firmware_sim/renewal_policy.py), against
the real Mosquitto, bridge, renewal service and PostgreSQL: a short-lived certificate is
replaced while the device publishes and nothing is lost; without a renewer the device
retries with growing waits and keeps publishing; a refused device waits long.

The CA backdates every certificate by 5 minutes (clock skew), so a certificate with 20 s
left has lived 320 s: a third of that is already past, and the renewal is due at once."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from aiopaho import AsyncClient, MqttError
from broker_bridge.bridge import Bridge
from broker_bridge.connection import tls_context
from devices.broker_config import RENEWER_IDENTITY
from devices.ca import key_pem, make_csr, new_key, write_private
from devices.renewal import RenewalService
from firmware_sim.models import Watch
from firmware_sim.renewal_policy import RenewalPolicy
from healthiot.localservers import MosquittoServer
from healthiot.services import Core
from tests.conftest import BrokerAddress, Pki, new_device, new_patient, wait_until
from tests.integration.test_device_revocation import (  # noqa: F401 (fixtures)
    _ender,
    crl_bridge,
    crl_broker,
)
from tests.integration.test_renewal import (  # noqa: F401 (fixture)
    _connect_with,
    _nothing_lost,
    _serial,
    renewer,
)

SHORT_LIFE = dt.timedelta(seconds=20)
REFUSED_WAIT_S = 2.5


def _fast(seed: int) -> RenewalPolicy:
    """Test timing: a failed exchange after 0.3 s, retries from 0.2 s doubling, a refusal
    waited out in 2.5 s."""
    return RenewalPolicy(random.Random(seed), retry_min_s=0.2, answer_timeout_s=0.3,
                         attempts=1, refused_wait_s=REFUSED_WAIT_S)


async def _short_lived_watch(core: Core, pki: Pki, server: MosquittoServer, directory: Path,
                             life: dt.timedelta, policy: RenewalPolicy) -> Watch:
    """A paired watch whose certificate, issued by the CA, ends ``life`` from now."""
    patient, _, _ = await new_patient(core, f"auto.{time.monotonic_ns()}")
    return await new_device(core, pki, BrokerAddress("localhost", server.port, server),
                            directory, patient, Watch, validity=life, interval_s=0.2,
                            renewal_policy=policy)


def _connections(server: MosquittoServer, client_id: str) -> int:
    """How many times the broker logged a connection under ``client_id``."""
    pattern = re.compile(rf"New client connected from \S+ as {re.escape(client_id)} \(")
    return len(pattern.findall(server.log_file.read_text(errors="replace")))


@pytest.fixture
async def csr_spy(pki: Pki, crl_broker: MosquittoServer,  # noqa: F811
                  tmp_path: Path) -> AsyncIterator[list[tuple[float, str]]]:
    """When each CSR reached the broker, and from which device, seen with the renewer's
    identity (the only one the ACL lets read them) by a client that never answers."""
    key = new_key()
    write_private(tmp_path / "spy.key", key_pem(key))
    (tmp_path / "spy.pem").write_bytes(
        pki.ca.issue_client(make_csr(key, RENEWER_IDENTITY), service=True))
    client = AsyncClient(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                     client_id="svc-renewer-spy", protocol=mqtt.MQTTv5))
    client.paho.tls_set_context(tls_context(pki.ca.ca_file, tmp_path / "spy.pem",
                                            tmp_path / "spy.key"))
    await client.connect("localhost", crl_broker.services_port, timeout=5)
    await client.subscribe("devices/+/csr", qos=1)
    seen: list[tuple[float, str]] = []

    async def record() -> None:
        while True:
            message = await client.messages.get()
            seen.append((time.monotonic(), message.topic.split("/")[1]))

    task = asyncio.create_task(record(), name="csr-spy")
    try:
        yield seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.disconnect()


async def test_a_short_lived_certificate_is_renewed_by_the_device_while_it_publishes(
        core: Core, pki: Pki, crl_broker: MosquittoServer,  # noqa: F811
        crl_bridge: Bridge, renewer: RenewalService, tmp_path: Path) -> None:  # noqa: F811
    device = await _short_lived_watch(core, pki, crl_broker, tmp_path, SHORT_LIFE,
                                      RenewalPolicy(random.Random(1)))  # the firmware's timing
    old_pem = device.flash.cert_file.read_bytes()
    old_end = x509.load_pem_x509_certificate(old_pem).not_valid_after_utc
    shutil.copy(device.flash.cert_file, tmp_path / "old.pem")
    shutil.copy(device.flash.key_file, tmp_path / "old.key")
    stop = asyncio.Event()
    running = asyncio.create_task(device.run(stop), name="short-lived-watch")

    async def renewed() -> bool:
        return device.ledger.renewals == 1
    await wait_until(renewed)
    left = old_end - dt.datetime.now(dt.UTC)
    assert left > dt.timedelta(0)
    new_pem = device.flash.cert_file.read_bytes()
    assert _serial(new_pem) != _serial(old_pem)
    assert [c.serial for c in await core.registry.certificates(device.device_id)] == \
        [_serial(old_pem), _serial(new_pem)]
    assert await core.pool.fetchval("SELECT cert_serial FROM devices WHERE id = $1",
                                    device.device_id) == _serial(new_pem)

    # The device reconnected by itself to use it (the broker logged a second connection),
    # and went on sending.
    async def reconnected() -> bool:
        return _connections(crl_broker, device.device_id) >= 2
    await wait_until(reconnected)

    async def sending(n: int) -> bool:
        return device.online and device.ledger.messages >= n
    sent = device.ledger.messages
    await wait_until(lambda: sending(sent + 5))

    # Past the old certificate's end the broker refuses it; the device, cut off by the
    # revoker, is back at once and sends on: with the new certificate.
    await asyncio.sleep(max(0.0, (old_end - dt.datetime.now(dt.UTC)).total_seconds()) + 1)
    with pytest.raises(MqttError):
        await _connect_with(pki, tmp_path / "old.pem", tmp_path / "old.key",
                            f"{device.device_id}.probe", crl_broker.port)
    await _ender(pki, crl_broker.services_port, tmp_path)(device.device_id)
    sent = device.ledger.messages
    await wait_until(lambda: sending(sent + 5))
    assert device.ledger.renewals == 1 and device.ledger.renewal_failures == 0
    assert renewer.answered == 1

    stop.set()
    await running
    await device.flush(10)
    assert device.pending == 0
    await _nothing_lost(core, device)  # every sample stored once: lost=0, dup=0
    print(f"\nrenewed {left.total_seconds():.1f} s before the old certificate's end; "
          f"{device.ledger.messages} messages, none lost")


async def test_without_a_renewer_the_device_retries_with_growing_waits_and_keeps_sending(
        core: Core, pki: Pki, crl_broker: MosquittoServer,  # noqa: F811
        crl_bridge: Bridge, csr_spy: list[tuple[float, str]], tmp_path: Path) -> None:  # noqa: F811
    device = await _short_lived_watch(core, pki, crl_broker, tmp_path,
                                      dt.timedelta(minutes=1), _fast(2))
    stop = asyncio.Event()
    running = asyncio.create_task(device.run(stop), name="unanswered-watch")

    async def failed(n: int) -> bool:
        return device.ledger.renewal_failures >= n
    await wait_until(lambda: failed(1))
    sent_at_first_failure = device.ledger.messages
    await wait_until(lambda: failed(5))
    stop.set()
    await running
    times = [t for t, who in csr_spy if who == device.device_id]
    assert len(times) == device.ledger.renewal_failures >= 5  # each attempt sent its CSR
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # The wait after the k-th failure is at least half its step (0.2 s doubling), besides
    # the 0.3 s the device waited for an answer: no hammering. The times are the CSRs'
    # arrivals at the spy, through the broker: 0.1 s is left for one arriving late.
    for k, gap in enumerate(gaps, start=1):
        assert gap >= 0.3 + 0.1 * 2 ** (k - 1) - 0.1, gaps
    assert gaps[-1] > gaps[0] + 0.4  # the fourth step (0.8-1.6 s) against the first (0.1-0.2 s)
    assert device.ledger.renewals == 0
    assert device.flash.cert_file.exists()
    assert device.ledger.messages >= sent_at_first_failure + 2  # it published all along
    await device.flush(10)
    assert device.pending == 0
    await _nothing_lost(core, device)
    print(f"\nrenewal attempts {len(times)}, gaps {', '.join(f'{g:.2f}' for g in gaps)} s")


async def test_a_refused_device_waits_long_before_asking_again(
        core: Core, pki: Pki, crl_broker: MosquittoServer,  # noqa: F811
        renewer: RenewalService, tmp_path: Path) -> None:  # noqa: F811
    device = await _short_lived_watch(core, pki, crl_broker, tmp_path,
                                      dt.timedelta(minutes=1), _fast(3))
    await core.registry.revoke(device.device_id)  # unpaired; its CRL entry is not out yet
    stop = asyncio.Event()
    running = asyncio.create_task(device.run(stop), name="refused-watch")

    async def refused(n: int) -> bool:
        return renewer.refused >= n
    await wait_until(lambda: refused(1))
    first = time.monotonic()
    await asyncio.sleep(1.5)  # five retries' worth at the failure backoff
    assert renewer.refused == 1 and device.ledger.renewal_failures == 1
    await wait_until(lambda: refused(2))
    assert time.monotonic() - first >= REFUSED_WAIT_S - 0.1

    async def second_refusal_read() -> bool:  # the renewer counts before the device reads
        return device.ledger.renewal_failures == 2
    await wait_until(second_refusal_read)
    assert device.ledger.renewals == 0
    assert renewer.answered == 0
    stop.set()
    await running
