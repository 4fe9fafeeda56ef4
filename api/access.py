"""A clinician's access to a patient, checked on every request and audited either way.

No consent at all answers 403 (the same for a patient who does not exist, so ids cannot be
probed); data outside the granted metrics and period is simply not there.
"""

from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
from aiohttp import web

from api.problems import Problem
from api.requests import DEPS, bearer_claims, clinician_of
from storage.consents import Access, Consents
from storage.segments import Samples

NO_CONSENT = "this patient has not given you access"


async def clinician_access(request: web.Request, patient_id: uuid.UUID, *, action: str,
                           resource: str) -> tuple[uuid.UUID, Access]:
    """The calling clinician and what they may see of ``patient_id`` now, or 403. The
    attempt is audited, refused or not: the patient sees both."""
    deps = request.app[DEPS]
    clinician_id = clinician_of(bearer_claims(request, health_data=True))
    access = await Consents(deps.pool).access(clinician_id, patient_id, dt.datetime.now(dt.UTC))
    await deps.audit.record(actor=f"clinician:{clinician_id}", patient_id=patient_id, action=action,
                            resource=resource, outcome="ok" if access else "refused",
                            client=request.remote)
    if access is None:
        raise Problem(403, NO_CONSENT)
    return clinician_id, access


async def read_granted(request: web.Request, access: Access, patient_id: uuid.UUID,
                       metric: str, start: dt.datetime, end: dt.datetime) -> Samples:
    """The samples of ``metric`` in [start, end) that the access covers (maybe none)."""
    store = request.app[DEPS].store
    parts = [await store.read_series(patient_id, metric, a, b)
             for a, b in access.clip(metric, start, end)]
    if not parts:
        return Samples(np.array([], np.int64), np.array([], np.float64),
                       np.array([], np.uint8))
    return Samples(np.concatenate([p.t_ms for p in parts]),
                   np.concatenate([p.value for p in parts]),
                   np.concatenate([p.flags for p in parts]))
