"""Consents: what a patient shares with a clinician, checked on every clinician request."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, slots=True)
class Consent:
    id: uuid.UUID
    patient_id: uuid.UUID
    clinician_id: uuid.UUID
    metrics: tuple[str, ...]
    data_from: dt.datetime
    data_to: dt.datetime
    expires_at: dt.datetime
    granted_at: dt.datetime
    revoked_at: dt.datetime | None

    def active(self, now: dt.datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at


def _row(row: asyncpg.Record) -> Consent:
    return Consent(row["id"], row["patient_id"], row["clinician_id"], tuple(row["metrics"]),
                   row["data_from"], row["data_to"], row["expires_at"], row["granted_at"],
                   row["revoked_at"])


@dataclass(frozen=True, slots=True)
class Access:
    """What one clinician may see of one patient now: per metric, the granted windows."""

    windows: dict[str, list[tuple[dt.datetime, dt.datetime]]]

    def clip(self, metric: str, start: dt.datetime, end: dt.datetime
             ) -> list[tuple[dt.datetime, dt.datetime]]:
        """The parts of [start, end) the clinician may read for ``metric`` (maybe none),
        sorted and disjoint: two overlapping consents must not read a sample twice."""
        out: list[tuple[dt.datetime, dt.datetime]] = []
        for lo, hi in sorted(self.windows.get(metric, [])):
            a, b = max(lo, start), min(hi, end)
            if a >= b:
                continue
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
        return out


class Consents:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def grant(self, patient_id: uuid.UUID, clinician_id: uuid.UUID,
                    metrics: Sequence[str], data_from: dt.datetime, data_to: dt.datetime,
                    expires_at: dt.datetime) -> Consent:
        row = await self._pool.fetchrow(
            """INSERT INTO consents (id, patient_id, clinician_id, metrics, data_from, data_to,
                                     expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *""",
            uuid.uuid4(), patient_id, clinician_id, list(metrics), data_from, data_to,
            expires_at)
        return _row(row)

    async def for_patient(self, patient_id: uuid.UUID) -> list[Consent]:
        rows = await self._pool.fetch(
            "SELECT * FROM consents WHERE patient_id = $1 ORDER BY granted_at DESC",
            patient_id)
        return [_row(r) for r in rows]

    async def revoke(self, patient_id: uuid.UUID, consent_id: uuid.UUID) -> bool:
        """Revoke one of the patient's consents; False when it is not theirs or not there
        (the same answer, so a patient cannot probe another's consent ids)."""
        done = await self._pool.fetchval(
            """UPDATE consents SET revoked_at = now()
               WHERE id = $1 AND patient_id = $2 AND revoked_at IS NULL RETURNING id""",
            consent_id, patient_id)
        return done is not None

    async def access(self, clinician_id: uuid.UUID, patient_id: uuid.UUID,
                     now: dt.datetime) -> Access | None:
        """The clinician's current access to the patient, or None without any active
        consent. Read from the database on every call: revocation is immediate."""
        rows = await self._pool.fetch(
            """SELECT metrics, data_from, data_to FROM consents
               WHERE clinician_id = $1 AND patient_id = $2 AND revoked_at IS NULL
               AND expires_at > $3""", clinician_id, patient_id, now)
        if not rows:
            return None
        windows: dict[str, list[tuple[dt.datetime, dt.datetime]]] = {}
        for row in rows:
            for metric in row["metrics"]:
                windows.setdefault(metric, []).append((row["data_from"], row["data_to"]))
        return Access(windows)

    async def patients_of(self, clinician_id: uuid.UUID, now: dt.datetime) -> list[uuid.UUID]:
        rows = await self._pool.fetch(
            """SELECT DISTINCT patient_id FROM consents WHERE clinician_id = $1
               AND revoked_at IS NULL AND expires_at > $2 ORDER BY patient_id""",
            clinician_id, now)
        return [r["patient_id"] for r in rows]
