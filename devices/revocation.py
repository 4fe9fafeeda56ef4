"""Revocation: the registry marks it, the CRL refuses new handshakes, and (optionally) a
live MQTT session is ended.

The database is the source of truth: the CRL is rebuilt from every revoked certificate that
has not expired, so any process holding the device CA can publish it again (and a lost
publication is repaired by the next one, or by ``healthiot devices crl``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from devices.ca import CertificateAuthority
from devices.registry import Device, Registry

log = logging.getLogger(__name__)

Reload = Callable[[], None]  # makes the broker read the CRL again (SIGHUP to Mosquitto)
SessionEnder = Callable[[str], Awaitable[None]]  # ends the device's live MQTT session


class CrlPublisher:
    """Writes the device CA's CRL where the broker's ``crlfile`` points, then reloads it."""

    def __init__(self, registry: Registry, ca: CertificateAuthority, path: Path,
                 reload: Reload | None = None) -> None:
        self._registry = registry
        self._ca = ca
        self.path = path
        self._reload = reload
        self._lock = asyncio.Lock()  # two revocations at once: one file write at a time

    async def publish(self) -> int:
        """Rebuild the CRL from the registry and install it; returns how many it lists."""
        async with self._lock:
            revoked = await self._registry.revoked_certificates()
            pem = await asyncio.to_thread(self._ca.crl, revoked)
            await asyncio.to_thread(_install, self.path, pem)
            if self._reload is not None:
                self._reload()
        log.info("CRL published", extra={"revoked": len(revoked), "path": str(self.path)})
        return len(revoked)


def _install(path: Path, pem: bytes) -> None:
    """Replace the file atomically: the broker must never read half a CRL. World-readable:
    a CRL is public, and the broker runs as its own user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(pem)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


class Revoker:
    """Revoke a device everywhere it matters, in order: the registry first (from then on
    the bridge stores nothing it sends), then the CRL (no new handshake), then the live
    session. Takes its collaborators; both of the last two may be absent in a process that
    holds no CA or no broker identity, and the revocation still holds in the database."""

    def __init__(self, registry: Registry, crl: CrlPublisher | None = None,
                 end_session: SessionEnder | None = None) -> None:
        self._registry = registry
        self._crl = crl
        self._end_session = end_session

    async def revoke(self, device_id: str, *, patient_id: uuid.UUID | None = None) -> Device:
        """Raises UnknownDevice (also for another patient's device when ``patient_id`` is
        given) or InvalidTransition; errors of the CRL or broker steps are logged, not
        raised: the revocation is committed, and the next publication repairs the CRL."""
        device = await self._registry.revoke(device_id, patient_id=patient_id)
        await self.enforce(device_id)
        return device

    async def enforce(self, device_id: str) -> None:
        """The broker-side steps for a device already revoked in the registry."""
        if self._crl is None:
            log.warning("no CRL publisher here: run `healthiot devices crl`",
                        extra={"device": device_id})
        else:
            try:
                await self._crl.publish()
            except OSError:
                log.exception("CRL not published", extra={"device": device_id})
        if self._end_session is not None:
            try:
                await self._end_session(device_id)
            except Exception:  # the broker may be down: the CRL still bars the reconnect
                log.exception("live session not ended", extra={"device": device_id})
