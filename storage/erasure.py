"""Erasure of a patient (GDPR art. 17): crypto-erasure first, then the rows.

Destroying the patient's data keys makes every sealed segment, rollup, outbox entry and
quarantined payload of theirs unreadable at once, including copies in backups taken
before; the rows are removed as well. The keys of their devices (held weighings of a shared
scale, quarantined payloads of a device not paired to one person) go too, and so do those
devices' quarantine keys for scales they were a member of.

What remains, and why (README, "Erasure"):
- the audit log (who accessed whose data, when; never health values): the access trace
  CNIL and HDS require; append-only, so never rewritten. It names the patient's id, and a
  device only by a reference (``device/<audit_ref>``) that erasure replaces in the device's
  registry row, so no row maps an old audit entry to a device any more;
- ``erasures``: that the erasure happened, when, at whose request (accountability);
- their devices' registry rows, revoked, without owner, serial, firmware, last contact or
  battery, with their certificate history: a revoked certificate must stay refused.
The message ledger of their devices (rows and compacted runs) is deleted, as are pairing
records and renewals.
"""

from __future__ import annotations

import uuid

import asyncpg

from storage.held import device_owner
from storage.keyring import Keyring
from storage.quarantine import quarantine_owner


def device_key_owners(device_id: str) -> tuple[str, str]:
    """The keyring owners of a device: its held weighings' key and its quarantine key.
    Whoever takes a device out of service destroys both (their secret halves live
    outside the database; a trigger deletes the wrapped halves)."""
    return device_owner(device_id), quarantine_owner(device_id)


def _count(status: str) -> int:
    return int(status.split()[-1])


async def erase_patient(pool: asyncpg.Pool, keyring: Keyring, patient_id: uuid.UUID,
                        requested_by: str) -> int:
    """Erase everything of ``patient_id``; returns how many segments were removed."""
    # The secret half of the key first: from this instant nothing of theirs opens, in this
    # database or in any dump of it, whatever happens to the transaction below.
    keyring.forget(str(patient_id))
    async with pool.acquire() as conn, conn.transaction():
        devices = [r["id"] for r in await conn.fetch(
            "SELECT id FROM devices WHERE patient_id = $1 ORDER BY id", patient_id)]
        # Shared scales they are a member of: their weighings may be in its quarantine.
        joined = [r["device_id"] for r in await conn.fetch(
            "SELECT device_id FROM device_users WHERE patient_id = $1 AND role = 'member'",
            patient_id)]
        await conn.execute("DELETE FROM data_keys WHERE owner = $1", str(patient_id))
        status = await conn.execute("DELETE FROM segments WHERE patient_id = $1", patient_id)
        await conn.execute("DELETE FROM segments_set_aside WHERE patient_id = $1", patient_id)
        # Rollups, like segments, have no foreign key to patients to cascade from.
        rollups = await conn.execute("DELETE FROM rollups WHERE patient_id = $1", patient_id)
        quarantined = await conn.execute(
            "DELETE FROM quarantine WHERE device_id = ANY($1::text[]) OR key_owner = ANY($2)",
            devices, [str(patient_id), *(quarantine_owner(d) for d in joined)])
        await conn.execute("DELETE FROM data_keys WHERE owner = ANY($1::text[])",
                           [quarantine_owner(d) for d in joined])
        # The ledger (times, counts, units per message) of their devices: what the loss
        # accounting needed is moot once the data is gone.
        ledger = await conn.execute(
            "DELETE FROM ingested_messages WHERE device_id = ANY($1::text[])", devices)
        runs = await conn.execute(
            "DELETE FROM ingested_ranges WHERE device_id = ANY($1::text[])", devices)
        # A device's EUI-64, like its serial, names the hardware the person had.
        for table in ("device_pairing", "device_pairing_failures", "certificate_renewals",
                      "record_device_system_ids"):
            await conn.execute(f"DELETE FROM {table} WHERE device_id = ANY($1::text[])",  # noqa: S608
                               devices)
        # Their devices are revoked, not reassigned: what they still send is refused. A
        # shared scale goes with its owner: its members lose it, and its held weighings
        # and their key are deleted (migration 090); its quarantine key too (migration 110).
        # Memberships of this patient in others' scales go with the patient row.
        await conn.execute(
            """UPDATE devices SET patient_id = NULL,
                      state = CASE WHEN state = 'retired' THEN state ELSE 'revoked' END,
                      serial = NULL, firmware_version = NULL, last_seen = NULL,
                      battery_percent = NULL, battery_at = NULL
               WHERE id = ANY($1::text[])""", devices)
        # New audit references: the old ones, in the append-only log, name no device now.
        await conn.execute("UPDATE devices SET audit_ref = DEFAULT WHERE id = ANY($1::text[])",
                           devices + joined)
        await conn.execute("DELETE FROM sessions WHERE subject = $1", str(patient_id))
        # Consents, zones, source orders and the record feed go with the patient (cascade).
        await conn.execute("DELETE FROM patients WHERE id = $1", patient_id)
        segments = _count(status)
        for device_id in devices:
            for owner in device_key_owners(device_id):
                keyring.forget(owner)
        for device_id in joined:
            keyring.forget(quarantine_owner(device_id))
        await conn.execute(
            "INSERT INTO erasures (patient_id, requested_by, detail) VALUES ($1, $2, $3)",
            patient_id, requested_by,
            f"data keys destroyed; {segments} segments, {_count(rollups)} rollups, "
            f"{_count(quarantined)} quarantined payloads, {_count(ledger)} ledger rows, "
            f"{_count(runs)} ledger runs and "
            f"{len(devices)} device bindings removed")
    return segments
