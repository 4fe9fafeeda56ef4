"""Erasure of a patient (GDPR art. 17): crypto-erasure first, then the rows.

Destroying the patient's data keys makes every sealed segment, rollup and outbox entry of
theirs unreadable at once, including copies in backups taken before; the rows are removed
as well. What remains: the audit log (who accessed what, when; never health values) and a
record that the erasure happened.
"""

from __future__ import annotations

import uuid

import asyncpg

from storage.held import device_owner
from storage.keyring import Keyring


async def erase_patient(pool: asyncpg.Pool, keyring: Keyring, patient_id: uuid.UUID,
                        requested_by: str) -> int:
    """Erase everything of ``patient_id``; returns how many segments were removed."""
    # The secret half of the key first: from this instant nothing of theirs opens, in this
    # database or in any dump of it, whatever happens to the transaction below.
    keyring.forget(str(patient_id))
    async with pool.acquire() as conn, conn.transaction():
        devices = [r["id"] for r in await conn.fetch(
            "SELECT id FROM devices WHERE patient_id = $1", patient_id)]
        await conn.execute("DELETE FROM data_keys WHERE owner = $1", str(patient_id))
        status = await conn.execute("DELETE FROM segments WHERE patient_id = $1", patient_id)
        await conn.execute("DELETE FROM segments_set_aside WHERE patient_id = $1", patient_id)
        # Rollups, like segments, have no foreign key to patients to cascade from.
        rollups = await conn.execute("DELETE FROM rollups WHERE patient_id = $1", patient_id)
        # Their devices are revoked, not reassigned: what they still send is quarantined.
        # A shared scale goes with its owner: its members lose it, and its held weighings
        # and their key are deleted (migration 090); the key's secret half is destroyed
        # below. Memberships of this patient in others' scales go with the patient row.
        await conn.execute(
            "UPDATE devices SET patient_id = NULL, state = 'revoked' WHERE id = ANY($1::text[])",
            devices)
        await conn.execute("DELETE FROM quarantine WHERE device_id = ANY($1::text[])", devices)
        await conn.execute("DELETE FROM sessions WHERE subject = $1", str(patient_id))
        # Consents, zones, source orders and the record feed go with the patient (cascade).
        await conn.execute("DELETE FROM patients WHERE id = $1", patient_id)
        segments = int(status.split()[-1])
        for device_id in devices:
            keyring.forget(device_owner(device_id))
        await conn.execute(
            "INSERT INTO erasures (patient_id, requested_by, detail) VALUES ($1, $2, $3)",
            patient_id, requested_by,
            f"data keys destroyed; {segments} segments, {rollups.split()[-1]} rollups and "
            f"{len(devices)} device bindings removed")
    return segments
