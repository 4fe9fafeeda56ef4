"""Households for ``healthiot simulate --scenario shared-scale``, and the check of who got
which weighing.

Each scale of the fleet is shared by 2 or 3 people. Their weights are 10 kg apart or more,
far outside the attribution tolerance (broker_bridge/attribution.py: max(2 kg, 3 %)), so
each of their weighings must go to them; in a household of three, two are 0.6 kg apart, so
the weighings of that pair must be held as ambiguous, for the app to claim.

The scale's owner (the simulated patient who paired it) is person 0; the others are
simulated patients ``sim-<device id>-<n>`` who join through devices/household.py, as the
app does (the owner's invitation, the member's join). Each person gets a weight from before,
dated a day before the setup, as if entered in the app or measured on an earlier scale:
without it, every weighing would be held as ``no_recent_weight`` until each person claimed
one, and the demo would show nothing attributed. The weight is given again when a person has
none in RESEED_AFTER, so that it never falls out of the 90 days attribution looks back (the
close pair get no new weight from the scale).

The check compares the scale's ground truth (``ledger.weighed``: time, person) with what
storage holds: the weighing's weight in one person's data from that scale (decrypted,
matched by the exact millisecond), or held unclaimed on the scale.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from api import passwords, totp
from devices.household import Household
from firmware_sim.models import Scale
from healthiot.services import Core
from storage.segments import Samples
from storage.store import SegmentIn
from storage.unclaimed import Unclaimed

WEIGHT = "body_weight"
MIN_APART_KG = 10.0  # distinct people: beyond any tolerance, noise and drift of a run
CLOSE_APART_KG = 0.6  # the close pair: within each other's tolerance, so ambiguous
LIGHTEST_KG, HEAVIEST_KG = 40.0, 120.0  # the members drawn: adults and teenagers
HISTORY_SOURCE = "sim-history"  # the source of the weights from before
HISTORY_AGE = dt.timedelta(days=1)
RESEED_AFTER = dt.timedelta(days=30)  # well inside attribution's 90 days
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)


def household_weights(rng: random.Random, owner_kg: float, *, three: bool) -> list[float]:
    """The weights of a scale's people, the owner's first: with ``three``, a close pair (the
    owner and the next) and one more, else two distinct people."""
    people = [owner_kg]
    if three:
        close = owner_kg + CLOSE_APART_KG if owner_kg < 100 else owner_kg - CLOSE_APART_KG
        people.append(round(close, 1))
    while len(people) < (3 if three else 2):
        kg = round(rng.uniform(LIGHTEST_KG, HEAVIEST_KG), 1)
        if all(abs(kg - other) >= MIN_APART_KG for other in people):
            people.append(kg)
    return people


async def ensure_patients(core: Core, usernames: Sequence[str]) -> dict[str, uuid.UUID]:
    """Simulated patients by username, created when missing. They cannot sign in: their
    password is random and forgotten, hashed once for all of them."""
    found: dict[str, uuid.UUID] = {}
    hashed: str | None = None
    for username in usernames:
        patient = await core.patients.by_username(username)
        if patient is None:
            if hashed is None:
                hashed = await asyncio.to_thread(passwords.hash_password,
                                                 secrets.token_urlsafe(24))
            patient = await core.patients.create(username, hashed, totp.new_secret())
        found[username] = patient.id
    return found


async def ensure_households(core: Core, scales: Sequence[Scale],
                            now: dt.datetime | None = None) -> dict[str, list[uuid.UUID]]:
    """Each shared scale's people, in the order of ``Scale.people`` (the owner first): the
    members created and joined when missing, each one's weight from before given when they
    have none recent. Returns device id -> patient ids."""
    now = now or dt.datetime.now(dt.UTC)
    household = Household(core.pool, core.registry)
    people: dict[str, list[uuid.UUID]] = {}
    for scale in scales:
        device = await core.registry.get(scale.device_id)
        if device.patient_id is None:
            raise RuntimeError(f"{scale.device_id} is not paired")
        names = [f"sim-{scale.device_id}-{n}" for n in range(1, len(scale.people))]
        members = await ensure_patients(core, names)
        using = set((await core.registry.users([scale.device_id])).get(scale.device_id, []))
        for member in members.values():
            if member not in using:
                code, _ = await household.invite(scale.device_id, device.patient_id, now)
                await household.join(member, code, now)
        people[scale.device_id] = [device.patient_id, *(members[n] for n in names)]
        for patient_id, person in zip(people[scale.device_id], scale.people, strict=True):
            await _weight_from_before(core, patient_id, person.kg, now)
    return people


async def _weight_from_before(core: Core, patient_id: uuid.UUID, kg: float,
                              now: dt.datetime) -> None:
    recent = await core.store.read_series(patient_id, WEIGHT, now - RESEED_AFTER,
                                          now + HISTORY_AGE)
    if len(recent):
        return
    ms = (now - HISTORY_AGE - _EPOCH) // _MS
    async with core.pool.acquire() as conn, conn.transaction():
        await core.store.write_segments(conn, HISTORY_SOURCE, [SegmentIn(
            patient_id, WEIGHT, Samples(np.array([ms], np.int64), np.array([round(kg, 1)]),
                                        np.array([0], np.uint8)))])


@dataclass(frozen=True)
class Attribution:
    """One shared scale's weighings of this run, against what storage holds."""

    weighings: int = 0
    attributed: int = 0  # in one person's data
    right: int = 0  # ... the person who stood on the scale
    wrong: int = 0  # ... someone else (or more than one person)
    held: int = 0  # unclaimed, for the household to claim

    @property
    def missing(self) -> int:
        return self.weighings - self.attributed - self.held


async def check(core: Core, scale: Scale, people: Sequence[uuid.UUID]) -> Attribution:
    """Where each weighing of ``scale.ledger.weighed`` went, by its exact millisecond."""
    truth = [(round(t * 1000), who) for t, who, _ in scale.ledger.weighed]
    if not truth:
        return Attribution()
    start = _EPOCH + min(t for t, _ in truth) * _MS
    end = _EPOCH + (max(t for t, _ in truth) + 1) * _MS
    given: dict[int, list[int]] = {}  # millisecond -> people holding it from this scale
    for who, patient_id in enumerate(people):
        mine = (await core.store.read_by_source(patient_id, WEIGHT, start, end)).get(
            scale.device_id)
        for t in [] if mine is None else mine.t_ms.tolist():
            given.setdefault(t, []).append(who)
    # The owner sees every weighing held since the scale was paired to them.
    held = {(r.measured_at - _EPOCH) // _MS
            for r in await Unclaimed(core.pool, core.keyring, core.store).visible(
                scale.device_id, people[0])}
    attributed = right = held_now = 0
    for t, who in truth:
        if t in given:
            attributed += 1
            right += given[t] == [who]
        elif t in held:
            held_now += 1
    return Attribution(len(truth), attributed, right, attributed - right, held_now)


def summary(checks: Sequence[Attribution], people: int) -> str:
    total = Attribution(*(sum(getattr(c, f) for c in checks) for f in (
        "weighings", "attributed", "right", "wrong", "held")))
    return (f"shared scales: scales={len(checks)} people={people} "
            f"weighings={total.weighings} attributed={total.attributed} "
            f"(right={total.right} wrong={total.wrong}) held={total.held} "
            f"missing={total.missing}")
