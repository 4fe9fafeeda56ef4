"""The audit log: who did what to whose data, when, with what outcome. Never health values."""

from __future__ import annotations

import uuid

import asyncpg


class Audit:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, *, actor: str, patient_id: uuid.UUID | None, action: str,
                     resource: str, outcome: str) -> None:
        await self._pool.execute(
            "INSERT INTO audit_log (actor, patient_id, action, resource, outcome)"
            " VALUES ($1, $2, $3, $4, $5)", actor, patient_id, action, resource, outcome)

    async def for_patient(self, patient_id: uuid.UUID, limit: int = 100) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._pool.fetch(
            "SELECT at, actor, action, resource, outcome FROM audit_log WHERE patient_id = $1"
            " ORDER BY at DESC LIMIT $2", patient_id, limit)
        return rows
