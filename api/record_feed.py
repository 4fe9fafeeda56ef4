"""The medical-record feed: readings of consenting patients, as FHIR transaction Bundles,
from the durable outbox to the configured FHIR endpoint.

Two steps, each safe to repeat: ``collect`` puts the readings of the acceptance window into
the outbox (already-queued readings are skipped by identifier), ``send_due`` posts what is
due. The record creates conditionally by identifier, so even a post repeated after a crash
creates nothing twice. Only spot measurements are fed (one reading, one Observation): a
1 Hz heart-rate stream is not what a medical record is for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from storage.audit import Audit
from storage.device_info import DeviceInfo
from storage.record_feed import Entry, RecordFeed
from storage.segments import Samples
from storage.store import Store
from vitals import fhir
from vitals.normalise import DEFAULT_PAST_WINDOW_S

log = logging.getLogger(__name__)

SPOT_METRICS = ("body_weight", "body_temperature", "blood_glucose")
BP_METRICS = ("systolic_bp", "diastolic_bp")
ACTOR = "service:record-feed"
_NAMESPACE = uuid.UUID("5b6f3f0e-8f3c-4e55-9d0e-6c8f1a2b3c4d")  # observation ids from idents
MAX_BACKOFF_S = 3600.0


@dataclass(frozen=True)
class FeedConfig:
    url: str  # the FHIR base the transaction Bundles are posted to
    sender_oid: str  # our OID, the identifier system of what we create
    base_backoff_s: float = 5.0
    timeout_s: float = 20.0
    batch: int = 100


def bundles_for(patient_id: uuid.UUID, ins: str, sender_oid: str,
                by_source: Mapping[str, Mapping[str, Samples]],
                devices: Mapping[str, DeviceInfo] | None = None
                ) -> list[tuple[str, str, dict[str, Any]]]:
    """(identifier, metric, transaction Bundle) for every clean reading in ``by_source``
    (device id -> metric -> samples). A reading of a registered device (in ``devices``)
    travels with that device as a PHD Device; one of an unknown source goes alone."""
    subject = fhir.ins_subject(ins)
    system = f"urn:oid:{sender_oid}"
    out: list[tuple[str, str, dict[str, Any]]] = []
    seen: set[str] = set()

    def add(ident: str, metric: str, obs: dict[str, Any],
            device: dict[str, Any] | None) -> None:
        # Two sources with a reading at the same millisecond: the record gets the first.
        if ident not in seen:
            seen.add(ident)
            out.append((ident, metric, fhir.feed_bundle(obs, sender_oid, device)))

    for device_id, series in sorted(by_source.items()):
        info = (devices or {}).get(device_id)
        device = None if info is None else fhir.device_resource(
            str(uuid.uuid5(_NAMESPACE, f"device/{device_id}")), sender_oid, device_id,
            info.model, info.serial)
        for metric in SPOT_METRICS:
            samples = series.get(metric)
            if samples is None:
                continue
            for t, v, flags in zip(samples.t_ms.tolist(), samples.value.tolist(),
                                   samples.flags.tolist(), strict=True):
                if flags:
                    continue  # a flagged value waits for review; it is not sent to a record
                ident = f"{patient_id}/{metric}/{t}"
                add(ident, metric, fhir.observation(
                    str(uuid.uuid5(_NAMESPACE, ident)), metric, subject, t, v,
                    identifier=(system, ident)), device)
        sys_s, dia_s = series.get(BP_METRICS[0]), series.get(BP_METRICS[1])
        if sys_s is None or dia_s is None:
            continue
        common, i, j = np.intersect1d(sys_s.t_ms, dia_s.t_ms, return_indices=True)
        for k, t in enumerate(common.tolist()):
            if sys_s.flags[i[k]] or dia_s.flags[j[k]]:
                continue
            ident = f"{patient_id}/blood_pressure/{t}"
            add(ident, "blood_pressure", fhir.blood_pressure(
                str(uuid.uuid5(_NAMESPACE, ident)), subject, t, float(sys_s.value[i[k]]),
                float(dia_s.value[j[k]]), identifier=(system, ident)), device)
    return out


def _diagnostics(body: Any) -> str:
    """The human text of an OperationOutcome answer, when there is one."""
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [i.get("diagnostics") or i.get("details", {}).get("text", "")
                 for i in body.get("issue", []) if isinstance(i, dict)]
        return "; ".join(t for t in texts if t)
    return ""


class FeedSender:
    def __init__(self, feed: RecordFeed, store: Store, audit: Audit,
                 session: aiohttp.ClientSession, config: FeedConfig) -> None:
        self._feed = feed
        self._store = store
        self._audit = audit
        self._session = session
        self._config = config

    async def collect(self, now: dt.datetime | None = None) -> int:
        """Queue the readings of the acceptance window of every consenting patient: a
        reading replayed late by an offline device still gets fed."""
        now = now or dt.datetime.now(dt.UTC)
        start = now - dt.timedelta(seconds=DEFAULT_PAST_WINDOW_S)
        queued = 0
        for patient_id, ins in await self._feed.consenting():
            by_source: dict[str, dict[str, Samples]] = {}
            for metric in (*SPOT_METRICS, *BP_METRICS):
                for device_id, samples in (await self._store.read_by_source(
                        patient_id, metric, start, now)).items():
                    by_source.setdefault(device_id, {})[metric] = samples
            devices = await self._feed.devices(sorted(by_source))
            entries = bundles_for(patient_id, ins, self._config.sender_oid, by_source,
                                  devices)
            queued += await self._feed.enqueue(patient_id, entries)
        return queued

    async def send_due(self) -> dict[str, int]:
        """Post every due entry once; returns counts by outcome."""
        counts = {"sent": 0, "refused": 0, "retry": 0}
        for entry in await self._feed.claim_due(self._config.batch):
            counts[await self._send(entry)] += 1
        return counts

    async def _send(self, entry: Entry) -> str:
        metric = entry.identifier.split("/")[1]
        if not await self._feed.still_consented(entry.patient_id):
            await self._feed.mark_refused(entry.id, None, "not sent: the patient withdrew "
                                          "consent to feed the medical record")
            return "refused"
        try:
            async with self._session.post(
                    self._config.url, json=entry.bundle,
                    headers={"Content-Type": "application/fhir+json",
                             "Accept": "application/fhir+json"},
                    timeout=aiohttp.ClientTimeout(total=self._config.timeout_s)) as response:
                status = response.status
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._later(entry, None, f"the medical record is unreachable ({exc!r})")
            return "retry"
        if 200 <= status < 300:
            await self._feed.mark_sent(entry.id, status)
            await self._record(entry, metric, "ok")
            return "sent"
        detail = _diagnostics(body)
        if status == 403:
            reason = "the medical record refused: consent not given"
        elif status in (400, 422):
            reason = "the medical record refused the reading as invalid"
        elif status in (401, 408, 429) or status >= 500:
            # Our credentials, its load or its health: nothing the patient can act on.
            await self._later(entry, status, f"the medical record answered {status}")
            return "retry"
        else:
            reason = f"the medical record refused the reading ({status})"
        await self._feed.mark_refused(entry.id, status, f"{reason}: {detail}" if detail
                                      else reason)
        await self._record(entry, metric, "refused")
        return "refused"

    async def _later(self, entry: Entry, status: int | None, reason: str) -> None:
        delay = min(self._config.base_backoff_s * 2 ** entry.attempts, MAX_BACKOFF_S)
        delay *= random.uniform(0.5, 1.0)
        log.warning("record feed: %s; retry in %.0fs", reason, delay)
        await self._feed.retry_later(entry.id, status, reason, dt.timedelta(seconds=delay))

    async def _record(self, entry: Entry, metric: str, outcome: str) -> None:
        await self._audit.record(actor=ACTOR, patient_id=entry.patient_id, action="feed",
                                 resource=f"record/{metric}", outcome=outcome)

    async def run_forever(self, interval_s: float) -> None:
        while True:
            try:
                await self.collect()
                await self.send_due()
            except Exception:  # one bad cycle must not end the feed; the outbox keeps all
                log.exception("record feed cycle failed")
            await asyncio.sleep(interval_s)
