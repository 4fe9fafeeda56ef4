"""Demo patients and their simulated devices, created on first run and reused after.

The credentials are random, written owner-only to var/demo/credentials.json, and printed
for the developer: nothing about them is fixed in code.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

from api import passwords, totp
from devices.ca import CertificateAuthority, write_private
from devices.identity import new_device_id
from firmware_sim.device import Broker, Flash, SimulatedDevice, enrol
from firmware_sim.models import Scale, Watch
from healthiot.services import Core

DEMO_PATIENTS = ("alice", "bob")
# (patient, model, measuring interval in seconds): a few watches and a scale.
DEMO_FLEET = (("alice", "watch", 2.0), ("alice", "scale", 10.0),
              ("bob", "watch", 2.0), ("bob", "watch", 3.0))


@dataclass(frozen=True)
class DemoAccount:
    username: str
    password: str
    totp_secret: bytes
    patient_id: uuid.UUID


async def ensure_patients(core: Core, directory: Path) -> dict[str, DemoAccount]:
    """The demo accounts, created with fresh random credentials on first run."""
    path = directory / "credentials.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    accounts = {}
    for username in DEMO_PATIENTS:
        entry = saved.get(username)
        patient = await core.patients.by_username(username)
        if patient is None:
            password, secret = secrets.token_urlsafe(12), totp.new_secret()
            hashed = await asyncio.to_thread(passwords.hash_password, password)
            patient = await core.patients.create(username, hashed, secret)
            entry = saved[username] = {"password": password,
                                       "totp_secret": totp.secret_base32(secret),
                                       "patient_id": str(patient.id)}
            directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, at start)
            write_private(path, json.dumps(saved, indent=2).encode())
        elif entry is None:
            raise RuntimeError(f"{path} lost the credentials of {username}; "
                               "remove var/ to start over")
        accounts[username] = DemoAccount(username, entry["password"],
                                         totp.secret_from_base32(entry["totp_secret"]),
                                         uuid.UUID(entry["patient_id"]))
    return accounts


async def ensure_fleet(core: Core, ca: CertificateAuthority, accounts: dict[str, DemoAccount],
                       directory: Path, broker: Broker) -> list[SimulatedDevice]:
    """The demo devices: each enrols (key on the device, CSR to the CA) and is paired."""
    path = directory / "fleet.json"
    ids: list[str] = json.loads(path.read_text()) if path.exists() else []
    devices: list[SimulatedDevice] = []
    for index, (username, model, interval) in enumerate(DEMO_FLEET):
        if index >= len(ids):
            ids.append(new_device_id(model))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(ids))
        device_id = ids[index]
        flash = Flash(directory / "devices" / device_id)

        async def issue(csr: bytes) -> bytes:
            return await asyncio.to_thread(ca.issue_client, csr)

        await enrol(flash, device_id, issue)
        if device_id not in await core.registry.lookup([device_id]):
            await core.registry.register(device_id, model=model, serial=f"DEMO-{index:04d}",
                                         cert_pem=flash.cert_file.read_bytes(),
                                         patient_id=accounts[username].patient_id)
        kind = Watch if model == "watch" else Scale
        devices.append(kind(device_id, flash, broker, interval_s=interval,
                            rng=random.Random(index)))
    return devices
