"""Quarantined payloads: what could not be stored as health data, sealed, with its reason.

Written by ``Store.ingest`` in the ingestion transaction; read only for diagnosis (an
operator looking at why a device's messages are refused).
"""

from __future__ import annotations

import asyncpg

from storage.crypto import open_sealed
from storage.keyring import Keyring, system_owner

QUARANTINE_KEY = "quarantine"


def quarantine_aad(topic: str, received_at_iso: str) -> bytes:
    return f"quarantine|{topic}|{received_at_iso}".encode()


async def open_quarantined(conn: asyncpg.Connection, keyring: Keyring,
                           row: asyncpg.Record) -> bytes:
    """The payload of a ``quarantine`` row; IntegrityError if it was tampered with,
    KeyUnavailable once the key that sealed it is erased."""
    _, key = await keyring.current(conn, system_owner(QUARANTINE_KEY))
    return open_sealed(key, row["sealed"], quarantine_aad(row["topic"],
                                                          row["received_at"].isoformat()))
