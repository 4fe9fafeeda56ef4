"""The medical-record feed: readings of consenting patients, as FHIR transaction Bundles,
from the durable outbox to the configured FHIR endpoint.

Two steps, each safe to repeat: ``collect`` puts the readings of the acceptance window into
the outbox (already-queued readings are skipped by identifier), ``send_due`` posts what is
due. The record creates conditionally by identifier, so even a post repeated after a crash
creates nothing twice. What is fed follows the ANS "Mesures de santé" guide: single
readings and the blood-pressure panel as Observations with a valueQuantity, steps as a
daily total, each with the PHD Device that measured it; the patient is named by the
identifier of the authorisation they gave (api/record_auth.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import random
import uuid
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from api.record_auth import RecordAccount, RecordAuthError, RelinkNeeded
from api.record_models import ModelCatalogue
from storage.audit import Audit
from storage.device_info import DeviceInfo
from storage.record_feed import Entry, RecordFeed
from storage.segments import Samples
from storage.store import Store
from vitals import fhir
from vitals.normalise import DEFAULT_PAST_WINDOW_S

log = logging.getLogger(__name__)

# Single readings the guide has a profile for; a model's configuration says which of them
# its readings are (a watch's 1 Hz heart rate is not a reading a record is for).
SPOT_METRICS = ("body_weight", "body_temperature", "blood_glucose", "heart_rate", "spo2")
BP_METRICS = ("systolic_bp", "diastolic_bp")
ACTOR = "service:record-feed"
_NAMESPACE = uuid.UUID("5b6f3f0e-8f3c-4e55-9d0e-6c8f1a2b3c4d")  # observation ids from idents
MAX_BACKOFF_S = 3600.0
DAY_ZONE = "Europe/Paris"  # a day's steps are those of the patient's calendar day in France


@dataclass(frozen=True)
class FeedConfig:
    url: str  # the FHIR base the transaction Bundles are posted to
    sender_oid: str  # our OID, the identifier system of what we create
    base_backoff_s: float = 5.0
    timeout_s: float = 20.0
    batch: int = 100
    relink_wait_s: float = 3600.0  # a reading waiting for a new link is looked at again


def bundles_for(patient_id: uuid.UUID, subject: dict[str, Any], sender_oid: str,
                by_source: Mapping[str, Mapping[str, Samples]],
                devices: Mapping[str, DeviceInfo], models: ModelCatalogue,
                system_ids: Mapping[str, str], *, window_ms: tuple[int, int] | None = None
                ) -> list[tuple[str, str, dict[str, Any]]]:
    """(outbox identifier, metric, transaction Bundle) for every clean reading in
    ``by_source`` (device id -> metric -> samples) that the record can take: from a
    registered device (``devices``) of a configured model whose system id is known
    (``system_ids``: device id -> EUI-64), of a metric the model's configuration feeds.
    Anything else stays out: the record refuses an Observation without its PHD Device.

    ``subject`` is the person as the record knows them. The outbox identifier is ours
    (unique per patient, metric and time); what the record sees is an opaque id derived
    from it, never our patient id. Steps go as daily totals of the days wholly inside
    ``window_ms`` (the span read; default: none)."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    seen: set[str] = set()

    def add(ident: str, metric: str, build: Callable[[str, tuple[str, str]], dict[str, Any]],
            device: dict[str, Any]) -> None:
        # Two sources with a reading at the same millisecond: the record gets the first.
        if ident not in seen:
            seen.add(ident)
            opaque = str(uuid.uuid5(_NAMESPACE, ident))
            obs = build(opaque, (f"urn:oid:{sender_oid}", opaque))
            out.append((ident, metric, fhir.feed_bundle(obs, sender_oid, device)))

    for device_id, series in sorted(by_source.items()):
        info, system_id = devices.get(device_id), system_ids.get(device_id)
        model = models.get(info.model) if info else None
        if info is None or model is None or system_id is None:
            if any(m in series for m in (*SPOT_METRICS, *BP_METRICS, "steps")):
                log.info("record feed: readings of %s wait for its description (registered:"
                         " %s, model configured: %s, system id: %s)", device_id,
                         info is not None, model is not None, system_id is not None)
            continue
        device = fhir.device_resource(str(uuid.uuid5(_NAMESPACE, f"device/{device_id}")),
                                      sender_oid, device_id, info.model, info.serial,
                                      phd=model.phd(system_id))
        for metric in SPOT_METRICS:
            samples = series.get(metric)
            if samples is None or metric not in model.fed:
                continue
            for t, v, flags in zip(samples.t_ms.tolist(), samples.value.tolist(),
                                   samples.flags.tolist(), strict=True):
                if flags:
                    continue  # a flagged value waits for review; it is not sent to a record
                add(f"{patient_id}/{metric}/{t}", metric, functools.partial(
                    _single, metric, subject, t, v, model.fed[metric]), device)
        sys_s, dia_s = series.get(BP_METRICS[0]), series.get(BP_METRICS[1])
        if sys_s is not None and dia_s is not None and "blood_pressure" in model.fed:
            common, i, j = np.intersect1d(sys_s.t_ms, dia_s.t_ms, return_indices=True)
            for k, t in enumerate(common.tolist()):
                if sys_s.flags[i[k]] or dia_s.flags[j[k]]:
                    continue
                add(f"{patient_id}/blood_pressure/{t}", "blood_pressure", functools.partial(
                    _panel, subject, t, float(sys_s.value[i[k]]), float(dia_s.value[j[k]]),
                    model.fed["blood_pressure"]), device)
        steps = series.get("steps")
        if steps is not None and "steps" in model.fed and window_ms is not None:
            for start_ms, end_ms, total in daily_steps(steps, window_ms):
                add(f"{patient_id}/steps_by_day/{start_ms}", "steps", functools.partial(
                    _steps, subject, start_ms, end_ms, total), device)
    return out


def _single(metric: str, subject: dict[str, Any], t: int, v: float, decimals: int,
            oid: str, identifier: tuple[str, str]) -> dict[str, Any]:
    return fhir.observation(oid, metric, subject, t, v, identifier=identifier,
                            decimals=decimals)


def _panel(subject: dict[str, Any], t: int, systolic: float, diastolic: float,
           decimals: int, oid: str, identifier: tuple[str, str]) -> dict[str, Any]:
    return fhir.blood_pressure(oid, subject, t, systolic, diastolic, identifier=identifier,
                               decimals=decimals)


def _steps(subject: dict[str, Any], start_ms: int, end_ms: int, total: float, oid: str,
           identifier: tuple[str, str]) -> dict[str, Any]:
    return fhir.steps_by_day(oid, subject, start_ms, end_ms, total, identifier=identifier)


def daily_steps(samples: Samples, window_ms: tuple[int, int]) -> list[tuple[int, int, float]]:
    """(day start ms, day end ms, total) per calendar day in France (DAY_ZONE) that lies
    wholly inside ``window_ms`` (the span read: [start, end)). A day still going on, or one
    cut by the acceptance window, would be sent with a total that later changes while the
    record keeps the first one it got. Flagged samples count: no step count is
    implausible enough to leave out of a day's total."""
    if len(samples.t_ms) == 0:
        return []
    zone = zoneinfo.ZoneInfo(DAY_ZONE)
    day = dt.datetime.fromtimestamp(int(samples.t_ms[0]) / 1000, zone).date()
    out: list[tuple[int, int, float]] = []
    while True:
        start = dt.datetime.combine(day, dt.time(), zone)
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone)
        start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
        if end_ms > window_ms[1] or start_ms > int(samples.t_ms[-1]):
            return out
        inside = (samples.t_ms >= start_ms) & (samples.t_ms < end_ms)
        if start_ms >= window_ms[0] and inside.any():
            out.append((start_ms, end_ms, float(samples.value[inside].sum())))
        day += dt.timedelta(days=1)


def _diagnostics(body: Any) -> str:
    """The human text of an OperationOutcome answer, when there is one."""
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [i.get("diagnostics") or i.get("details", {}).get("text", "")
                 for i in body.get("issue", []) if isinstance(i, dict)]
        return "; ".join(t for t in texts if t)
    return ""


RELINK_TEXT = "waiting: link your medical record again so the feed can resume"


class FeedSender:
    """Collects readings into the outbox and posts them with the patient's authorisation.

    What the patient sees per reading: sent, refused (with the record's reason; 403, 409
    and 422 cannot heal, so they are not retried) or pending. A 401 refreshes the token
    once and posts again; a second 401, or a refresh the record refuses, asks the patient
    to link again and keeps the readings pending until they do."""

    def __init__(self, feed: RecordFeed, store: Store, audit: Audit,
                 session: aiohttp.ClientSession, config: FeedConfig, account: RecordAccount,
                 models: ModelCatalogue) -> None:
        self._feed = feed
        self._store = store
        self._audit = audit
        self._session = session
        self._config = config
        self._account = account
        self._models = models

    async def collect(self, now: dt.datetime | None = None) -> int:
        """Queue the readings of the acceptance window of every consenting, linked
        patient: a reading replayed late by an offline device still gets fed."""
        now = now or dt.datetime.now(dt.UTC)
        start = now - dt.timedelta(seconds=DEFAULT_PAST_WINDOW_S)
        window = (int(start.timestamp() * 1000), int(now.timestamp() * 1000))
        queued = 0
        for patient_id in await self._feed.consenting():
            person = await self._account.person(patient_id)
            if person is None:
                continue  # consent without a link: nothing can be sent yet
            by_source: dict[str, dict[str, Samples]] = {}
            for metric in (*SPOT_METRICS, *BP_METRICS, "steps"):
                for device_id, samples in (await self._store.read_by_source(
                        patient_id, metric, start, now)).items():
                    by_source.setdefault(device_id, {})[metric] = samples
            ids = sorted(by_source)
            entries = bundles_for(
                patient_id, fhir.person_subject(person.system_oid, person.value),
                self._config.sender_oid, by_source, await self._feed.devices(ids),
                self._models, await self._account.links.system_ids(ids), window_ms=window)
            queued += await self._feed.enqueue(patient_id, entries)
        return queued

    async def send_due(self) -> dict[str, int]:
        """Post every due entry once; returns counts by outcome."""
        counts = {"sent": 0, "refused": 0, "retry": 0, "waiting": 0}
        for entry in await self._feed.claim_due(self._config.batch):
            counts[await self._send(entry)] += 1
        return counts

    async def _send(self, entry: Entry) -> str:
        metric = entry.identifier.split("/")[1]
        if not await self._feed.still_consented(entry.patient_id):
            await self._feed.mark_refused(entry.id, None, "not sent: the patient withdrew "
                                          "consent to feed the medical record")
            return "refused"
        answer: tuple[int, Any, float | None] | str = "waiting"
        for refresh in (False, True):
            try:
                token, _person = await self._account.access_token(entry.patient_id,
                                                                   force_refresh=refresh)
            except RelinkNeeded:
                answer = "waiting"
                break
            except RecordAuthError as exc:
                await self._later(entry, None, f"the medical record's sign-in is unreachable"
                                               f" ({exc})")
                return "retry"
            try:
                answer = await self._post(entry, token)
            except (aiohttp.ClientError, TimeoutError) as exc:
                await self._later(entry, None, f"the medical record is unreachable ({exc!r})")
                return "retry"
            if answer[0] != 401:
                break
            answer = "waiting"
            if refresh:  # a fresh token refused too: the authorisation is gone
                await self._account.mark_relink(entry.patient_id)
        if isinstance(answer, str):
            await self._feed.retry_later(entry.id, 401, RELINK_TEXT,
                                         dt.timedelta(seconds=self._config.relink_wait_s),
                                         count=False)
            return "waiting"
        status, body, retry_after = answer
        if 200 <= status < 300:
            await self._feed.mark_sent(entry.id, status)
            await self._record(entry, metric, "ok")
            return "sent"
        detail = _diagnostics(body)
        if status == 403 and "consent" in detail.lower():
            reason = "the medical record refused: consent not given"
        elif status == 403:
            reason = "the medical record refused: the reading names another person than " \
                     "the linked record"
        elif status == 409:
            reason = "the medical record refused: it knows healthiot under another OID"
        elif status in (400, 422):
            reason = "the medical record refused the reading as invalid"
        elif status in (408, 429) or status >= 500:
            # Its load or its health: nothing the patient can act on.
            await self._later(entry, status, f"the medical record answered {status}",
                              retry_after)
            return "retry"
        else:
            reason = f"the medical record refused the reading ({status})"
        await self._feed.mark_refused(entry.id, status, f"{reason}: {detail}" if detail
                                      else reason)
        await self._record(entry, metric, "refused")
        return "refused"

    async def _post(self, entry: Entry, token: str) -> tuple[int, Any, float | None]:
        async with self._session.post(
                self._config.url, json=entry.bundle,
                headers={"Content-Type": "application/fhir+json",
                         "Accept": "application/fhir+json",
                         "Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=self._config.timeout_s)) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            try:
                retry_after = float(response.headers.get("Retry-After", ""))
            except ValueError:
                retry_after = None
            return response.status, body, retry_after

    async def _later(self, entry: Entry, status: int | None, reason: str,
                     at_least_s: float | None = None) -> None:
        delay = min(self._config.base_backoff_s * 2 ** entry.attempts, MAX_BACKOFF_S)
        delay *= random.uniform(0.5, 1.0)
        delay = max(delay, min(at_least_s or 0.0, MAX_BACKOFF_S))  # the record's Retry-After
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
