"""``healthiot simulate``: a fleet of simulated devices against the embedded stack.

The stack is the one ``healthiot run`` starts (same var/, same servers, same bridge): one
command, nothing to start first, and the report reads the very database the bridge wrote.
The devices share the process's event loop with the bridge and the API; a fleet too large
for one core would move to its own process against ``make up`` (the devices only need the
broker address, their flash and the CA to enrol).

Each device has its own key (made on the device), certificate, flash directory with its
durable outbox, and mTLS connection. The fleet persists in var/simulate/, so a second run
reuses it and first delivers what the last one left queued.

The report compares, per device, what the broker acknowledged during this run with what
storage holds, sample by sample: each acknowledged payload decoded and normalised as the
bridge does it (canonical unit, UTC millisecond), against every stored copy of that device's
samples at those times, decrypted (segments, and weighings of a shared scale held for its
users). ``lost`` is samples acknowledged and neither stored nor held, less those rejected by
normalisation (quarantined: counted by the message ledger, ingested_messages and its runs of
numbers once compacted, for the device's range of acknowledged sequence numbers); ``dup``
is stored copies beyond the copies sent. A loss and a duplicate on one device do not cancel
out, and a reading stored under two sequence numbers is seen. A device whose payloads are
not SenML JSON (a misbehaving one) is compared by counts only, the ledger's samples against
what was acknowledged, as the loop that waits for the fleet to settle does for every device
(see ``DeviceReport``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker_bridge.bridge import Bridge
from devices.ca import CertificateAuthority
from devices.identity import new_device_id
from firmware_sim.device import Broker, Flash, SimulatedDevice, enrol, reset_clock_offset
from firmware_sim.models import MODELS, BpCuff, Glucometer, Scale, Thermometer, Watch
from healthiot import simulate_households as households
from healthiot import stack
from healthiot.localservers import MosquittoServer, raise_fd_limit
from healthiot.run import DRAIN_TIMEOUT_S, PROGRESS_EVERY_S, Servers, Workload, run
from healthiot.services import Core
from healthiot.settings import Settings
from storage.unclaimed import Unclaimed
from vitals.errors import PayloadError
from vitals.normalise import normalise
from vitals.senml import decode_json

DEVICES_PER_PATIENT = 2
# The fleet's mix, repeated: watches send every few seconds, the others are spot readings.
MIX = ("watch", "watch", "scale", "watch", "bp_cuff", "watch", "thermometer", "watch",
       "glucometer", "pulse_oximeter")
ENROL_CONCURRENCY = 16  # CA signing runs in threads; more only queues
REPORT_LINES_MAX = 20  # per-device lines printed; the full report is written to a file
# Open files per device in this process: its TLS socket (its SQLite outbox is open only
# while it is written, firmware_sim/outbox.py). Mosquitto needs one per session.
FILES_PER_DEVICE = 1
FILES_RESERVE = 2048  # the stack: PostgreSQL pool, bridge, API, logs
ENROL_REPORT_EVERY = 1000
RECONNECT_PROGRESS_EVERY_S = 5.0
ANNOUNCE_EVERY_S = 5.0
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


@dataclass(frozen=True)
class Scenario:
    """How a fleet behaves. Fractions pick devices by index, deterministically."""

    description: str
    watch_interval_s: float = 5.0
    spot_interval_s: float = 15.0  # scales, cuffs, thermometers, glucometers
    lossy_fraction: float = 0.0  # devices whose broker "acks then loses" two messages
    offline_fraction: float = 0.0  # devices offline for the first half of the run
    duplicate_every: int = 0  # every device publishes each n-th message twice
    skewed_fraction: float = 0.0  # devices whose clock is a few minutes off (stored)
    reset_fraction: float = 0.0  # devices whose clock restarted at 2000-01-01 (quarantined)
    broker_restart: bool = False  # Mosquitto killed (SIGKILL) and restarted halfway
    # Sensor artefacts on every device that measures the metric (firmware_sim/artefacts.py).
    hr_spike_every_s: float = 0.0
    spo2_dip_every_s: float = 0.0
    dropout_every_s: float = 0.0
    dropout_s: float = 0.0
    # Every scale shared by a household of 2 or 3 (healthiot/simulate_households.py).
    shared_scales: bool = False


SCENARIOS = {
    "steady": Scenario("every device online, measuring and sending"),
    # A loss is seen as a gap when a later number arrives: the lost numbers are early ones,
    # and watches send often, so that even a short run shows the resend.
    "lossy-broker": Scenario("one device in five has two messages acknowledged by the broker "
                             "and then lost; the bridge finds the gaps and asks for them",
                             watch_interval_s=2.0, lossy_fraction=0.2),
    "duplicates": Scenario("every third message is published twice; storage keeps one",
                           duplicate_every=3),
    "clock-skew": Scenario("a third of the devices run up to 4 minutes off, one in ten has "
                           "its clock reset to 2000-01-01: skewed readings are stored with "
                           "device time, reset ones are quarantined (rejected)",
                           skewed_fraction=1 / 3, reset_fraction=0.1),
    "broker-restart": Scenario("Mosquitto is killed halfway (no clean shutdown) and restarted: "
                               "devices and bridge reconnect, lost messages are asked for",
                               broker_restart=True),
    "offline": Scenario("one device in three is offline for the first half of the run, "
                        "buffers on its flash, then replays in bulk", offline_fraction=1 / 3),
    "artefacts": Scenario("sensors misread: a heart-rate spike about every 30 s (stored and "
                          "flagged, or a 0 rejected as impossible), an SpO2 dip about every "
                          "2 minutes (flagged), 10 s dropouts about every minute (gaps)",
                          hr_spike_every_s=30.0, spo2_dip_every_s=120.0,
                          dropout_every_s=60.0, dropout_s=10.0),
    "shared-scale": Scenario("every scale is shared by 2 or 3 people of distinct weights, "
                             "two of them 0.6 kg apart in every other household: each "
                             "weighing goes to the person it is clearly theirs, the close "
                             "pair's are held for the app to claim; scales weigh every 3 s",
                             spot_interval_s=3.0, shared_scales=True),
}


@dataclass
class DeviceReport:
    """One device's run against storage.

    ``lost`` and ``dup`` come from the sample-level comparison (``lost_and_dup``) when
    ``missing`` and ``extra`` are set: always in the final report, except for a device
    whose acknowledged payloads are not SenML JSON (a misbehaving device: malformed,
    padded, CBOR) or were not recorded. For those, and in the loop that waits for the fleet
    to settle, they fall back to the ledger's counts: samples acknowledged against samples
    stored, held and rejected for the acknowledged range, where a loss and a duplicate on
    one device cancel out and a reading stored under two numbers is not seen.
    """

    device_id: str
    model: str
    sent: int
    acked: int
    refused: int
    resent: int
    buffered: int
    samples: int
    stored_messages: int
    stored: int
    rejected: int
    renewed: int = 0  # certificates the device renewed by itself during the run
    spikes: int = 0  # sensor artefacts injected (the scenario's ground truth)
    dips: int = 0
    not_taken: int = 0
    people: int = 0  # a shared scale's users, and where its weighings went
    weighings: int = 0
    attributed: int = 0
    right: int = 0
    wrong: int = 0
    held: int = 0
    # Samples acknowledged and found neither stored nor held, and stored or held copies
    # beyond those acknowledged (``lost_and_dup``); None: compared by counts only.
    missing: int | None = None
    extra: int | None = None

    @property
    def lost(self) -> int:
        if self.missing is not None:
            return max(0, self.missing - self.rejected)
        return max(0, self.samples - self.stored - self.rejected)

    @property
    def dup(self) -> int:
        if self.extra is not None:
            return self.extra
        return max(0, self.stored + self.rejected - self.samples)


Sample = tuple[str, int, float]  # (metric, UTC millisecond, value in the canonical unit)


def lost_and_dup(sent: Counter[Sample], found: Counter[Sample]) -> tuple[int, int]:
    """(missing, extra): copies sent and not found, copies found beyond those sent, each
    sample (metric, time, value) on its own, so that one of each does not cancel out. A
    sample stored twice when sent once is one extra, even if another one is missing."""
    return sum((sent - found).values()), sum((found - sent).values())


def sent_samples(payloads: Sequence[bytes], received_at: float) -> Counter[Sample] | None:
    """The samples of SenML JSON ``payloads`` as storage holds them: decoded and normalised
    by vitals, as the bridge does it (units converted to the canonical one, times to UTC
    milliseconds). Every sample is counted, the ones normalisation would reject too. None
    when a payload is not SenML JSON."""
    try:
        packs = [decode_json(p, received_at=received_at) for p in payloads]
    except PayloadError:
        return None
    if not packs:
        return Counter()
    norm = normalise(packs, [received_at] * len(packs))
    # In input order, pack after pack: the names come from the packs (an unknown metric has
    # no index in the catalogue).
    names = [m for p in packs for m in p.metrics]
    return Counter(zip(names, norm.t_ms.tolist(), norm.value.tolist(), strict=True))


def workload(settings: Settings, *, devices: int, duration: float,
             scenario: Scenario) -> Workload:
    async def simulate(core: Core, materials: stack.Materials, bridge: Bridge,
                       stop: asyncio.Event, servers: Servers) -> int:
        directory = settings.var_dir / "simulate"
        broker = Broker(settings.mqtt_host, settings.mqtt_port, materials.ca.ca_file)
        memory = Memory(_broker(servers))
        started = time.monotonic()
        fleet = await ensure_fleet(core, materials.ca, directory, broker, devices, scenario)
        shared = await households.ensure_households(
            core, [d for d in fleet if isinstance(d, Scale)]) if scenario.shared_scales else {}
        _say(f"fleet ready: {len(fleet)} devices enrolled and paired in "
             f"{time.monotonic() - started:.1f} s ({directory})")
        try:
            reports = await _run(fleet, core, bridge, stop, duration, scenario, servers,
                                 memory)
        finally:
            for device in fleet:
                device.close()
        _say(memory.report())
        if scenario.hr_spike_every_s or scenario.spo2_dip_every_s or scenario.dropout_every_s:
            _say(_artefacts_line(fleet, bridge))
        wrong = await _attribution(fleet, core, shared, reports) if shared else 0
        return _report(reports, directory) or (1 if wrong else 0)
    return simulate


async def simulate(settings: Settings, *, devices: int, duration: float,
                   scenario: str | Scenario) -> int:
    """Start the stack, run the fleet for ``duration`` seconds, print the report. The
    scenario is one of SCENARIOS by name, or one of the caller's (bench/bench_fleet.py)."""
    chosen = SCENARIOS[scenario] if isinstance(scenario, str) else scenario
    _say(f"scenario {scenario if isinstance(scenario, str) else 'custom'}: "
         f"{chosen.description}")
    # Before the stack starts, so that Mosquitto inherits it too.
    wanted = devices * FILES_PER_DEVICE + FILES_RESERVE
    limit = raise_fd_limit(wanted)
    if limit < wanted:
        _say(f"warning: open files limited to {limit}; {devices} devices need about "
             f"{wanted} (raise ulimit -n, or run as root to let simulate raise it)")
    return await run(settings, duration,
                     workload(settings, devices=devices, duration=duration, scenario=chosen))


async def ensure_fleet(core: Core, ca: CertificateAuthority, directory: Path, broker: Broker,
                       count: int, scenario: Scenario) -> list[SimulatedDevice]:
    """``count`` devices, the first ones reused from earlier runs; each new one makes its
    key, sends its CSR to the CA and is paired with a simulated patient."""
    path = directory / "fleet.json"
    known: list[list[str]] = json.loads(path.read_text()) if path.exists() else []
    while len(known) < count:
        model = MIX[len(known) % len(MIX)]
        known.append([new_device_id(model), model])
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, at start)
    path.write_text(json.dumps(known))
    chosen = known[:count]
    registered = await core.registry.lookup(d for d, _ in chosen)
    patients = await _patients(core, [i // DEVICES_PER_PATIENT for i, (d, _) in
                                      enumerate(chosen) if d not in registered])
    gate = asyncio.Semaphore(ENROL_CONCURRENCY)
    enrolled = 0

    async def issue(csr: bytes) -> bytes:
        return await asyncio.to_thread(ca.issue_client, csr)

    async def one(index: int, device_id: str, model: str) -> SimulatedDevice:
        flash = Flash(directory / "devices" / device_id)
        async with gate:
            await enrol(flash, device_id, issue)
            if device_id not in registered:
                await core.registry.register(
                    device_id, model=model, serial=f"SIM-{index:06d}",
                    cert_pem=flash.cert_file.read_bytes(),
                    patient_id=patients[index // DEVICES_PER_PATIENT])
        nonlocal enrolled
        enrolled += 1
        if enrolled % ENROL_REPORT_EVERY == 0:
            _say(f"enrolled {enrolled}/{count}")
        device = _model(model, index, device_id, flash, broker, scenario)
        device.ledger.payloads = []  # compared with storage sample by sample at the end
        return device

    return list(await asyncio.gather(*(one(i, d, m) for i, (d, m) in enumerate(chosen))))


def _model(model: str, index: int, device_id: str, flash: Flash, broker: Broker,
           scenario: Scenario) -> SimulatedDevice:
    """A device of ``model``, its wearer and its units drawn from a generator seeded by its
    index: the same fleet behaves the same on every run."""
    rng = random.Random(index)
    spot = scenario.spot_interval_s
    if model == "watch":
        return Watch(device_id, flash, broker, interval_s=scenario.watch_interval_s, rng=rng,
                     resting_hr=rng.uniform(52, 78), utc_offset_h=rng.choice((0, 1, 2)))
    if model == "scale":
        kg, pounds = rng.uniform(50, 110), rng.random() < 0.3
        # Every other household of the mix has three people, two of them close.
        people = households.household_weights(rng, kg, three=index // len(MIX) % 2 == 0) \
            if scenario.shared_scales else None
        return Scale(device_id, flash, broker, interval_s=spot, rng=rng, kg=kg,
                     pounds=pounds, people=people)
    if model == "bp_cuff":
        return BpCuff(device_id, flash, broker, interval_s=spot, rng=rng,
                      systolic=rng.uniform(105, 150), kpa=rng.random() < 0.2)
    if model == "thermometer":
        return Thermometer(device_id, flash, broker, interval_s=spot, rng=rng,
                           fahrenheit=rng.random() < 0.3)
    if model == "glucometer":
        return Glucometer(device_id, flash, broker, interval_s=spot, rng=rng,
                          mmol=rng.random() < 0.5)
    return MODELS[model](device_id, flash, broker, interval_s=scenario.watch_interval_s,
                         rng=rng)


async def _patients(core: Core, indexes: list[int]) -> dict[int, uuid.UUID]:
    """Simulated patients ``sim-<index>``, created when missing."""
    found = await households.ensure_patients(core, [f"sim-{i:06d}" for i in
                                                    sorted(set(indexes))])
    return {i: found[f"sim-{i:06d}"] for i in set(indexes)}


async def _attribution(fleet: list[SimulatedDevice], core: Core,
                       shared: dict[str, list[uuid.UUID]], reports: list[DeviceReport]) -> int:
    """Each shared scale's weighings against where storage put them, into its report;
    prints the fleet's line and returns how many went to the wrong person."""
    by_id = {r.device_id: r for r in reports}
    checks = []
    for device in fleet:
        if isinstance(device, Scale) and device.device_id in shared:
            found = await households.check(core, device, shared[device.device_id])
            checks.append(found)
            report = by_id[device.device_id]
            report.people, report.weighings = len(device.people), found.weighings
            report.attributed, report.right = found.attributed, found.right
            report.wrong, report.held = found.wrong, found.held
    _say(households.summary(checks, sum(len(p) for p in shared.values())))
    return sum(c.wrong for c in checks)


def _apply(scenario: Scenario, fleet: list[SimulatedDevice],
           broker: Broker) -> Callable[[], None]:
    """Set the scenario's faults up; returns what ends the offline period."""
    n = len(fleet)
    lossy = fleet[:round(n * scenario.lossy_fraction)]
    for device in lossy:
        device.faults.lost_after_ack.update({device.next_seq, device.next_seq + 2})
    offline = fleet[n - round(n * scenario.offline_fraction):] if scenario.offline_fraction \
        else []
    nowhere = Broker(broker.host, 1, broker.ca_file)  # a closed port: refused at once
    for device in offline:
        device.broker = nowhere
    for device in fleet:
        device.faults.duplicate_every = scenario.duplicate_every
        device.faults.hr_spike_every_s = scenario.hr_spike_every_s
        device.faults.spo2_dip_every_s = scenario.spo2_dip_every_s
        device.faults.dropout_every_s = scenario.dropout_every_s
        device.faults.dropout_s = scenario.dropout_s
    skewed = round(n * scenario.skewed_fraction)
    for device in fleet[:skewed]:
        device.faults.clock_offset_s = device.rng.uniform(-240, 240)
    for device in fleet[skewed:skewed + round(n * scenario.reset_fraction)]:
        device.faults.clock_offset_s = reset_clock_offset(time.time())

    def back_online() -> None:
        for device in offline:
            device.broker = broker
    return back_online


async def _run(fleet: list[SimulatedDevice], core: Core, bridge: Bridge, stop: asyncio.Event,
               duration: float, scenario: Scenario, servers: Servers,
               memory: Memory) -> list[DeviceReport]:
    back_online = _apply(scenario, fleet, fleet[0].broker) if fleet else (lambda: None)
    measuring, done = asyncio.Event(), asyncio.Event()

    async def start(device: SimulatedDevice) -> None:
        # Spread the fleet over one interval, or every device sends in the same instant.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(measuring.wait(), random.uniform(0, device.interval_s))
        # After measuring, delivering and answering resend requests until done.
        await device.run(measuring, serve_until=done)

    tasks = [asyncio.create_task(start(d), name=f"device-{d.device_id}") for d in fleet]
    began = time.monotonic()
    interactive = sys.stdout.isatty()
    every = PROGRESS_EVERY_S if interactive else 5.0
    _say(f"running {len(fleet)} devices for {duration:g} s")
    halfway = False
    all_online = False
    try:
        while not stop.is_set():
            left = began + duration - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, min(every, left)))
            for server in servers:
                server.check_alive()
            online = sum(d.online for d in fleet)
            if not all_online and online == len(fleet):
                all_online = True
                _say(f"all {online} devices online {time.monotonic() - began:.1f} s after "
                     "the start")
            memory.sample(online)
            if not halfway and time.monotonic() - began >= duration / 2:
                halfway = True
                back_online()
                if scenario.broker_restart:
                    _say(memory.report())
                    await _restart_broker(servers, fleet)
            _progress(fleet, bridge, interactive)
            if time.monotonic() - began >= duration:
                break
    except BaseException:
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        if interactive:
            print(flush=True)
        back_online()
        measuring.set()
    _say("measuring stopped: delivering outboxes and answering resend requests")
    # Messages the broker lost after acknowledging them are found as a gap when a later
    # number arrives; the last ones a device sent have none, so each device announces its
    # last number now, and again while the database has not all it acknowledged (an
    # announcement can itself be lost, e.g. while the bridge is still reconnecting after a
    # broker restart).
    for device in fleet:
        device.announce()
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        announced = time.monotonic()
        while True:
            # By counts while waiting (cheap, every half second); sample by sample once,
            # for the report (every stored sample of the run decrypted).
            reports = await _compare(fleet, core, samples=False)
            settled = all(r.buffered == 0 and r.lost == 0 for r in reports)
            if settled or time.monotonic() > deadline:
                return await _compare(fleet, core)
            if time.monotonic() - announced >= ANNOUNCE_EVERY_S:
                announced = time.monotonic()
                for device, r in zip(fleet, reports, strict=True):
                    if r.lost:
                        device.announce()
            await asyncio.sleep(0.5)
    finally:
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _restart_broker(servers: Servers, fleet: list[SimulatedDevice]) -> None:
    """Kill the broker, start it again, and report how long the fleet takes to be back."""
    broker = _broker(servers)
    _say("killing Mosquitto (SIGKILL)")
    broker.kill()
    await asyncio.sleep(1.0)
    await broker.start()
    restarted = time.monotonic()
    _say("Mosquitto restarted; waiting for the devices")
    shown = restarted
    for _ in range(600):  # two minutes at most
        online = sum(d.online for d in fleet)
        if online == len(fleet):
            break
        if time.monotonic() - shown >= RECONNECT_PROGRESS_EVERY_S:
            shown = time.monotonic()
            _say(f"online {online}/{len(fleet)} {shown - restarted:.0f} s after the restart")
        await asyncio.sleep(0.2)
    _say(f"devices back online: {sum(d.online for d in fleet)}/{len(fleet)} in "
         f"{time.monotonic() - restarted:.1f} s after the restart")


def _broker(servers: Servers) -> MosquittoServer:
    return next(s for s in servers if isinstance(s, MosquittoServer))


def _rss_kib(pid: int | str) -> int:
    """Resident memory of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return 0


class Memory:
    """Resident memory of this process (devices, bridge and API) and of Mosquitto, against
    their baseline before the fleet connected, at the largest number of live sessions."""

    def __init__(self, broker: MosquittoServer) -> None:
        self._broker = broker
        self.base_self = _rss_kib("self")
        self.base_broker = self._broker_rss()
        self.sessions = 0
        self.self_kib = self.base_self
        self.broker_kib = self.base_broker

    def _broker_rss(self) -> int:
        try:
            return _rss_kib(self._broker.pid_file.read_text().strip())
        except OSError:
            return 0

    def sample(self, sessions: int) -> None:
        if sessions >= self.sessions:
            self.sessions = sessions
            self.self_kib, self.broker_kib = _rss_kib("self"), self._broker_rss()

    def report(self) -> str:
        n = max(1, self.sessions)
        return (f"memory at {self.sessions} sessions: simulator RSS "
                f"{self.self_kib / 1024:.0f} MiB ({(self.self_kib - self.base_self) / n:.1f} "
                f"KiB/session over its {self.base_self / 1024:.0f} MiB before the fleet), "
                f"mosquitto RSS {self.broker_kib / 1024:.0f} MiB "
                f"({(self.broker_kib - self.base_broker) / n:.1f} KiB/session over its "
                f"{self.base_broker / 1024:.0f} MiB)")


def _progress(fleet: list[SimulatedDevice], bridge: Bridge, interactive: bool) -> None:
    ledgers = [d.ledger for d in fleet]
    line = (f"devices online {sum(d.online for d in fleet)}/{len(fleet)} | "
            f"sent {sum(x.sent for x in ledgers)} | acked {sum(x.messages for x in ledgers)} | "
            f"buffered {sum(d.pending for d in fleet)} | refused "
            f"{sum(x.refused for x in ledgers)} | resent {sum(x.resent for x in ledgers)} | "
            f"stored {bridge.stats.messages} msgs | db "
            f"{'ok' if bridge.stats.healthy else 'RETRYING'}")
    print(("\r" + line) if interactive else line, end="" if interactive else "\n", flush=True)


async def _compare(fleet: list[SimulatedDevice], core: Core, *,
                   samples: bool = True) -> list[DeviceReport]:
    """Each device's ledger next to what the database holds for the numbers it had
    acknowledged during this run; with ``samples``, also what it sent next to what storage
    holds, sample by sample (``DeviceReport`` says when that falls back to counts)."""
    ranges = [(d.device_id, d.ledger.first_acked or 0, d.ledger.last_acked or -1)
              for d in fleet]
    # The ledger's compacted runs (rows older than its exact horizon, a day by default)
    # count in whole when inside the range; a run it cuts counts its numbers exactly and
    # its samples in proportion (only a run longer than that horizon meets one).
    rows = await core.pool.fetch(
        """WITH r AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                      AS r(d, lo, hi))
           SELECT d, sum(m) AS m, sum(s) AS s, sum(x) AS r FROM (
               SELECT r.d, count(i.seq) AS m, coalesce(sum(i.samples), 0) AS s,
                      coalesce(sum(i.rejected), 0) AS x
               FROM r LEFT JOIN ingested_messages i
                    ON i.device_id = r.d AND i.seq BETWEEN r.lo AND r.hi
               GROUP BY r.d
               UNION ALL
               SELECT r.d, n, round(g.samples * n / (g.seq_hi - g.seq_lo + 1)),
                      round(g.rejected * n / (g.seq_hi - g.seq_lo + 1))
               FROM r JOIN ingested_ranges g
                    ON g.device_id = r.d AND g.seq_lo <= r.hi AND g.seq_hi >= r.lo
               CROSS JOIN LATERAL (SELECT least(g.seq_hi, r.hi) - greatest(g.seq_lo, r.lo)
                                          + 1 AS n) c) t
           GROUP BY d""",
        [r[0] for r in ranges], [r[1] for r in ranges], [r[2] for r in ranges])
    stored = {r["d"]: (int(r["m"]), int(r["s"]), int(r["r"])) for r in rows}
    reports = []
    for d in fleet:
        x = d.ledger
        m, s, r = stored.get(d.device_id, (0, 0, 0))
        reports.append(DeviceReport(d.device_id, d.model, x.sent, x.messages, x.refused,
                                    x.resent, d.pending, x.samples, m, s, r,
                                    renewed=x.renewals, spikes=len(x.spikes),
                                    dips=len(x.dips), not_taken=len(x.not_taken)))
    if samples:
        now = time.time()
        sent = {d.device_id: c for d in fleet if d.ledger.payloads is not None
                and (c := sent_samples(d.ledger.payloads, now)) is not None}
        found = await _found_samples(core, sent)
        for report in reports:
            if report.device_id in sent:
                report.missing, report.extra = lost_and_dup(sent[report.device_id],
                                                            found[report.device_id])
    return reports


async def _found_samples(core: Core, sent: Mapping[str, Counter[Sample]]
                         ) -> dict[str, Counter[Sample]]:
    """Per device, every copy storage holds of a sample it sent at one of the (metric,
    time) it sent: its segments in each of its users' data, decrypted (``read_segments``
    keeps the copies), and the weighings held for a shared scale's users."""
    found: dict[str, Counter[Sample]] = {d: Counter() for d in sent}
    at = {d: {(m, t) for m, t, _ in samples} for d, samples in sent.items()}
    users = await core.registry.users(sent)
    # Each patient's series of a metric read once over the spans of all their devices
    # (a watch and a cuff both send heart rates), overlapping spans merged.
    spans: dict[tuple[uuid.UUID, str], list[tuple[int, int]]] = {}
    for device_id, samples in sent.items():
        times: dict[str, list[int]] = {}
        for m, t, _ in samples:
            times.setdefault(m, []).append(t)
        for patient_id in users.get(device_id, []):
            for m, ts in times.items():
                spans.setdefault((patient_id, m), []).append((min(ts), max(ts)))
    for (patient_id, m), wanted in spans.items():
        for lo, hi in _merged(wanted):
            for device_id, stored in await core.store.read_segments(
                    patient_id, m, _at(lo), _at(hi + 1)):
                if device_id in found:
                    mine = at[device_id]
                    found[device_id].update(
                        k for k in zip([m] * len(stored), stored.t_ms.tolist(),
                                       stored.value.tolist(), strict=True)
                        if (m, k[1]) in mine)
    unclaimed = Unclaimed(core.pool, core.keyring, core.store)
    for device_id, patients in users.items():
        if len(patients) < 2:
            continue  # held weighings are a shared scale's
        # The owner (first to join) sees every weighing held since pairing.
        for held in await unclaimed.visible(device_id, patients[0]):
            t = (held.measured_at - _EPOCH) // _MS
            found[device_id].update((m, t, v) for m, (v, _) in held.values.items()
                                    if (m, t) in at[device_id])
    return found


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive spans, overlapping ones merged (a clock reset to 2000 stays apart)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _at(ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=ms)


def _artefacts_line(fleet: list[SimulatedDevice], bridge: Bridge) -> str:
    """The sensor artefacts injected, beside what the bridge rejected as impossible (the
    spikes of 0 /min; the others are stored with a flag, see README "Normalisation")."""
    ledgers = [d.ledger for d in fleet]
    spikes = [v for x in ledgers for _, v in x.spikes]
    return (f"artefacts: spikes={len(spikes)} (zero={spikes.count(0.0)}) "
            f"dips={sum(len(x.dips) for x in ledgers)} "
            f"not_taken={sum(len(x.not_taken) for x in ledgers)} | bridge rejected "
            f"impossible_value={bridge.stats.rejected_by_reason.get('impossible_value', 0)}")


def _report(reports: list[DeviceReport], directory: Path) -> int:
    path = directory / "report.json"
    path.write_text(json.dumps([dict(vars(r), lost=r.lost, dup=r.dup) for r in reports],
                               indent=1))
    _say(f"{'device':<30} {'model':<14} {'sent':>6} {'acked':>6} {'refused':>7} "
         f"{'resent':>6} {'buffered':>8} {'stored':>6} {'lost':>5} {'dup':>4}")
    worst = sorted(reports, key=lambda r: (-r.lost, -r.dup, -r.buffered, r.device_id))
    for r in worst[:REPORT_LINES_MAX]:
        _say(f"{r.device_id:<30} {r.model:<14} {r.sent:>6} {r.acked:>6} {r.refused:>7} "
             f"{r.resent:>6} {r.buffered:>8} {r.stored_messages:>6} {r.lost:>5} {r.dup:>4}")
    if len(reports) > REPORT_LINES_MAX:
        _say(f"... {len(reports) - REPORT_LINES_MAX} more devices (worst first); all in {path}")
    lost, dup = sum(r.lost for r in reports), sum(r.dup for r in reports)
    by_counts = sum(r.missing is None for r in reports)
    if by_counts:
        _say(f"{by_counts} devices compared by counts only: their payloads are not SenML "
             "JSON (see DeviceReport)")
    _say(f"simulate: devices={len(reports)} messages={sum(r.acked for r in reports)} "
         f"samples={sum(r.samples for r in reports)} stored={sum(r.stored for r in reports)} "
         f"rejected={sum(r.rejected for r in reports)} "
         f"refused={sum(r.refused for r in reports)} resent={sum(r.resent for r in reports)} "
         f"renewed={sum(r.renewed for r in reports)} "
         f"buffered={sum(r.buffered for r in reports)} lost={lost} dup={dup}")
    return 0 if lost == 0 and dup == 0 else 1


def _say(text: str) -> None:
    print(text, flush=True)
