"""FHIR R4 resources for vital signs, as plain dicts: Observations, the record-feed Bundle.

Pure functions of their inputs (no clock, no ids drawn at random), so golden files can pin
their exact output. Profiles are the ANS "Mesures de santé" ones where the guide has one for
the metric; codes are LOINC, units UCUM.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vitals.catalogue import METRICS as _CATALOGUE
from vitals.catalogue import metric as metric_named

FHIR_VERSION = "4.0.1"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MESURES = "https://interop.esante.gouv.fr/ig/fhir/mesures"
FEED_BUNDLE_PROFILE = f"{MESURES}/StructureDefinition/mesures-bundle-flux-alimentation"
PHD_DEVICE_PROFILE = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice"
BP_PANEL_LOINC = "85354-9"
PULSE_OXIMETRY_LOINC = "59408-5"  # SpO2 by pulse oximetry: how every device of ours measures
# LOINC as the French terminology server (NOS, TRE_A04) publishes it: the system of the
# codes in the guide's value sets (glucose type JDV-J154, glucose moment JDV-J157).
NOS_LOINC = "https://mos.esante.gouv.fr/NOS/TRE_A04-Loinc/FHIR/TRE-A04-Loinc"
# JDV-J154 (type of glucose): blood glucose is 2345-7 there, not the catalogue's 2339-0.
GLUCOSE_CODE = ("2345-7", "Glucose sanguin")
STEPS_BY_DAY_LOINC = "41950-7"  # the steps-by-day profile fixes this code
# The category display the glucose, blood-pressure and SpO2 profiles fix; the others leave
# it free, so every Observation carries this one.
VITAL_SIGNS_DISPLAY = "vital-signs"
# PHD Device (HL7 Personal Health Device IG): the system id is an EUI-64 under this system,
# typed SYSID; the type is fixed to MDC_MOC_VMS_MDS_SIMP; specialisations are ISO/IEEE
# 11073-10101 codes.
ISO_11073 = "urn:iso:std:iso:11073:10101"
PHD_SYSTEM_ID = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
PHD_ID_TYPES = "http://hl7.org/fhir/uv/phd/CodeSystem/ContinuaDeviceIdentifiers"
PHD_DEVICE_TYPE = "65573"  # MDC_MOC_VMS_MDS_SIMP
EUI64 = re.compile(r"[0-9A-F]{2}(-[0-9A-F]{2}){7}")

# ANS "Mesures de santé" profile per metric; metrics absent have no profile in the guide.
ANS_PROFILES = {
    "heart_rate": "mesures-fr-observation-heartrate",
    "spo2": "mesures-fr-observation-oxygen-sat",
    "body_temperature": "mesures-fr-observation-body-temperature",
    "body_weight": "mesures-fr-observation-body-weight",
    "blood_glucose": "mesures-observation-glucose",
    "blood_pressure": "mesures-fr-observation-bp",
    "steps_by_day": "mesures-observation-steps-by-day",
}
# The glucose profile's "moment of measurement" extension, bound (required) to the value set
# JDV-J157-MomentGlucose-MES: LOINC codes (NOS system) for fasting, before a meal, after a
# meal, after exercise and "other", plus a CISP-2 code for a malaise that no device can know. The
# record's feed asks for it on every blood-glucose reading.
MOMENT_EXTENSION = f"{MESURES}/StructureDefinition/mesures-moment-of-measurement"
GLUCOSE_MOMENTS = {
    "fasting": ("53049-3", "Glucose à jeun"),
    "before_meal": ("88365-2", "Avant repas"),
    "after_meal": ("16915-1", "Glucose post prandial"),
    "after_exercise": ("LA11865-5", "Après exercice"),
    "other": ("LA46-8", "Autre"),
}
# Glucometers publish a value and a time, not the meal context: "other" is the one code of
# the value set that asserts nothing false about the reading, and the text says why.
MOMENT_NOT_REPORTED = "moment non renseigné par l'appareil"
# A reference ("Patient/<id>") or a Reference object (the record's: by the person
# identifier of the patient's authorisation).
Subject = str | dict[str, Any]

# The observation-category of each metric: vital signs are the ones FHIR's vital-signs
# profiles name (plus what the ANS profiles put there: glucose, steps by day); a watch's
# steps and sleep are activity; body fat, skin temperature and RR intervals are
# measurements outside the vital signs.
VITAL_SIGN_METRICS = frozenset({"heart_rate", "spo2", "body_temperature", "body_weight",
                                "blood_pressure", "systolic_bp", "diastolic_bp",
                                "blood_glucose", "steps_by_day"})
_CATEGORY_DISPLAY = {"vital-signs": VITAL_SIGNS_DISPLAY, "activity": "Activity",
                     "exam": "Exam"}


def category_code(metric: str) -> str:
    """The observation-category code an Observation of ``metric`` carries."""
    if metric in VITAL_SIGN_METRICS:
        return "vital-signs"
    return "activity" if metric in ("steps", "sleep_duration") else "exam"


# Metrics the medical record refuses on input: it computes BMI itself.
NOT_FED = frozenset({"bmi"})


def profile_url(metric: str) -> str | None:
    profile = ANS_PROFILES.get(metric)
    return f"{MESURES}/StructureDefinition/{profile}" if profile else None


def person_subject(system_oid: str, value: str) -> dict[str, Any]:
    """The subject as the medical record knows the patient: the oid/identifier pair of the
    authorisation the patient gave (Mon espace santé's IDPE), never our own ids."""
    return {"identifier": {"system": f"urn:oid:{system_oid}", "value": value}}


def instant(ms: int) -> str:
    """A FHIR instant (UTC, milliseconds) from epoch milliseconds."""
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=int(ms))
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _quantity(value: float, unit: str, decimals: int | None = None) -> dict[str, Any]:
    """A UCUM quantity; ``decimals``: the measuring device's precision (a converted value
    keeps no more digits than the device gave). An integral result is written as one."""
    number = round(float(value), 6 if decimals is None else decimals)
    out: int | float = int(number) if decimals == 0 else number
    return {"value": out, "unit": unit, "system": UCUM, "code": unit}


def _coding(code: str | None, display: str) -> dict[str, Any]:
    """A LOINC-coded concept; text only for a metric LOINC has no code for."""
    if code is None:
        return {"text": display}
    return {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}


def _metric_concept(metric: str) -> dict[str, Any]:
    m = metric_named(metric)
    if metric == "blood_glucose":
        code, display = GLUCOSE_CODE
        return {"coding": [{"system": NOS_LOINC, "code": code, "display": display},
                           {"system": LOINC, "code": code, "display": m.display}],
                "text": m.display}
    if metric == "spo2":  # measured by pulse oximetry: the profile's second coding says so
        concept = _coding(m.loinc, m.display)
        concept["coding"].append({"system": LOINC, "code": PULSE_OXIMETRY_LOINC,
                                  "display": "Oxygen saturation in Arterial blood by "
                                             "Pulse oximetry"})
        return concept
    return _coding(m.loinc, m.display)


def glucose_moment(moment: str | None) -> dict[str, Any]:
    """The moment-of-measurement extension; ``None`` when the device did not say."""
    code, display = GLUCOSE_MOMENTS[moment or "other"]
    concept: dict[str, Any] = {"coding": [{"system": NOS_LOINC, "code": code,
                                           "display": display}]}
    if moment is None:
        concept["text"] = MOMENT_NOT_REPORTED
    return {"url": MOMENT_EXTENSION, "valueCodeableConcept": concept}


def _base(observation_id: str, metric: str, patient_ref: Subject,
          device_ref: str | None, moment: str | None = None, *,
          claim_profile: bool = True) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Observation", "id": observation_id}
    profile = profile_url(metric) if claim_profile else None
    if profile:
        resource["meta"] = {"profile": [profile]}
    if metric == "blood_glucose":
        resource["extension"] = [glucose_moment(moment)]
    resource["status"] = "final"
    category = category_code(metric)
    resource["category"] = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category,
                                         "display": _CATEGORY_DISPLAY[category]}]}]
    if metric == "blood_pressure":
        resource["code"] = _coding(BP_PANEL_LOINC, "Blood pressure panel")
    elif metric == "steps_by_day":
        resource["code"] = _coding(STEPS_BY_DAY_LOINC, "Number of steps in 24 hour Measured")
    else:
        resource["code"] = _metric_concept(metric)
    resource["subject"] = (patient_ref if isinstance(patient_ref, dict)
                           else {"reference": patient_ref})
    if device_ref:
        resource["device"] = {"reference": device_ref}
    return resource


def observation(observation_id: str, metric: str, patient_ref: Subject, t_ms: int,
                value: float,
                *, device_ref: str | None = None, identifier: tuple[str, str] | None = None,
                moment: str | None = None, decimals: int | None = None) -> dict[str, Any]:
    """One reading as an Observation with a valueQuantity in the canonical UCUM unit,
    rounded to ``decimals`` when the device's precision is known. ``moment`` (a key of
    GLUCOSE_MOMENTS) is for blood glucose only; raises KeyError for an unknown one."""
    resource = _base(observation_id, metric, patient_ref, device_ref, moment)
    if identifier:
        resource["identifier"] = [{"system": identifier[0], "value": identifier[1]}]
    resource["effectiveDateTime"] = instant(t_ms)
    resource["valueQuantity"] = _quantity(value, metric_named(metric).unit, decimals)
    return _ordered(resource)


def blood_pressure(observation_id: str, patient_ref: Subject, t_ms: int, systolic: float,
                   diastolic: float, *, device_ref: str | None = None,
                   identifier: tuple[str, str] | None = None,
                   decimals: int | None = None) -> dict[str, Any]:
    """A cuff reading as the blood-pressure panel with its two components."""
    resource = _base(observation_id, "blood_pressure", patient_ref, device_ref)
    if identifier:
        resource["identifier"] = [{"system": identifier[0], "value": identifier[1]}]
    resource["effectiveDateTime"] = instant(t_ms)
    resource["component"] = [
        {"code": _metric_concept(name),
         "valueQuantity": _quantity(v, "mm[Hg]", decimals)}
        for name, v in (("systolic_bp", systolic), ("diastolic_bp", diastolic))]
    return _ordered(resource)


def sampled(observation_id: str, metric: str, patient_ref: str,
            t_ms: npt.NDArray[np.int64], value: npt.NDArray[np.float64], period_ms: int,
            *, device_ref: str | None = None) -> dict[str, Any]:
    """A dense series as one Observation with SampledData on a regular grid of
    ``period_ms``; grid points without a sample are "E" (no value), as FHIR says. It claims
    no ANS profile: those allow only valueQuantity (the value[x] slicing is closed).

    The data are small integers: each value is ``origin + factor * datum`` (FHIR's own
    decoding), the factor the device's resolution (0.1 for a tenth of a degree), the origin
    near the series' median. A year of 1 Hz heart rate is ~3 bytes a second this way."""
    if len(t_ms) == 0:
        raise ValueError("a SampledData Observation needs at least one sample")
    resource = _base(observation_id, metric, patient_ref, device_ref, claim_profile=False)
    slots = (t_ms - t_ms[0]) // period_ms
    grid = np.full(int(slots[-1]) + 1, np.nan)
    grid[slots] = value  # the last sample in a slot wins; the grid is the reader's choice
    resource["effectivePeriod"] = {"start": instant(int(t_ms[0])),
                                   "end": instant(int(t_ms[0] + slots[-1] * period_ms))}
    resource["valueSampledData"] = _sampled_data(grid, metric_named(metric).unit, period_ms)
    return _ordered(resource)


# SampledData's decimals: up to this many the data are written as integers with a factor.
_MAX_DECIMALS = 3


def _sampled_data(grid: npt.NDArray[np.float64], unit: str, period: float,
                  extension: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """SampledData of ``grid`` (NaN: "E"): origin, factor and integer data when the values
    have at most _MAX_DECIMALS decimals (a converted unit may have more: then decimals)."""
    present = ~np.isnan(grid)
    finite = grid[present]
    decimals = next((d for d in range(_MAX_DECIMALS + 1)
                     if np.all(np.abs(finite * 10 ** d - np.round(finite * 10 ** d)) < 1e-6)),
                    None)
    out: dict[str, Any] = {"extension": extension} if extension else {}
    if decimals is None:
        origin = 0.0
        text = ["E" if np.isnan(x) else _number(x) for x in grid.tolist()]
    else:
        origin = float(np.round(np.median(finite))) if len(finite) else 0.0
        data = np.round((np.where(present, grid, origin) - origin) * 10 ** decimals)
        text = list(map(str, data.astype(np.int64).tolist()))
        for i in np.flatnonzero(~present).tolist():
            text[i] = "E"
    out["origin"] = {"value": int(origin) if origin.is_integer() else origin, "unit": unit,
                     "system": UCUM, "code": unit}
    out["period"] = period
    if decimals:
        out["factor"] = float(f"1e-{decimals}")
    out["dimensions"] = 1
    out["data"] = " ".join(text)
    return out


def _number(x: float) -> str:
    text = f"{x:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def sampled_values(data: dict[str, Any]) -> list[float | None]:
    """The values a SampledData holds (None for "E"), decoded as FHIR says: origin plus
    factor times each datum; rounded to the factor's decimals."""
    origin = float(data["origin"]["value"])
    factor = float(data.get("factor", 1))
    decimals = max(0, round(-np.log10(factor))) if "factor" in data else 6
    return [None if x in ("E", "U", "L") else round(origin + factor * float(x), decimals)
            for x in data["data"].split()]


# RR intervals (issue 21): beat-to-beat intervals, one a beat, are no vital sign and have no
# LOINC code. Their times are irregular, which R4's SampledData cannot say, so a series
# holds the intervals in beat order and this extension the runs of consecutive beats: pairs
# "<index of the run's first beat> <its time, ms after effectivePeriod.start>". Within a run
# each beat comes one interval after the one before (what an RR interval is), to the
# millisecond: the time of beat i is the time of beat i-1 plus interval i rounded to whole
# milliseconds (half to even). A beat whose stored time is not that starts a run, so every
# beat time comes back exactly.
RR_RUNS_EXTENSION = "https://healthiot.example/fhir/StructureDefinition/rr-interval-runs"


def rr_runs(t_ms: npt.NDArray[np.int64], rr_ms: npt.NDArray[np.float64]) -> list[int]:
    """The indices where a run of consecutive beats starts (0 first)."""
    follows = np.diff(t_ms) == np.round(rr_ms[1:]).astype(np.int64)
    return [0, *(np.flatnonzero(~follows) + 1).tolist()]


def rr_series(observation_id: str, patient_ref: str, t_ms: npt.NDArray[np.int64],
              rr_ms: npt.NDArray[np.float64], *, device_ref: str | None = None
              ) -> dict[str, Any]:
    """RR intervals of a period as one Observation: no profile, outside the vital signs,
    coded by text (LOINC has no code for one interval), the intervals as SampledData in
    beat order with the runs extension (RR_RUNS_EXTENSION) giving when each run of beats
    started; ``period`` is the mean interval, the mean time between two samples."""
    if len(t_ms) == 0:
        raise ValueError("an RR series needs at least one beat")
    resource = _base(observation_id, "rr_interval", patient_ref, device_ref,
                     claim_profile=False)
    resource["effectivePeriod"] = {"start": instant(int(t_ms[0])),
                                   "end": instant(int(t_ms[-1]))}
    starts = rr_runs(t_ms, rr_ms)
    runs = " ".join(f"{i} {int(t_ms[i] - t_ms[0])}" for i in starts)
    resource["valueSampledData"] = _sampled_data(
        rr_ms.astype(np.float64), "ms", round(float(np.mean(rr_ms)), 1),
        [{"url": RR_RUNS_EXTENSION, "valueString": runs}])
    return _ordered(resource)


def rr_beat_times(resource: dict[str, Any]) -> list[int]:
    """The beat times (epoch ms) of an RR series, from its runs and intervals."""
    data = resource["valueSampledData"]
    rr = [x or 0.0 for x in sampled_values(data)]
    start = int(dt.datetime.fromisoformat(resource["effectivePeriod"]["start"])
                .timestamp() * 1000)
    pairs = [int(x) for x in next(e["valueString"] for e in data["extension"]
                                  if e["url"] == RR_RUNS_EXTENSION).split()]
    run_at = dict(zip(pairs[::2], pairs[1::2], strict=True))
    times: list[int] = []
    at = 0
    for i, interval in enumerate(rr):
        at = run_at[i] if i in run_at else at + round(interval)
        times.append(start + at)
    return times


def steps_by_day(observation_id: str, patient_ref: Subject, day_start_ms: int,
                 day_end_ms: int, total: float, *,
                 identifier: tuple[str, str] | None = None) -> dict[str, Any]:
    """A day's step count as the guide's steps-by-day profile wants it: LOINC 41950-7, a
    whole number in "1/(24.h)" ("steps/day"), over the period of that day."""
    resource = _base(observation_id, "steps_by_day", patient_ref, None)
    if identifier:
        resource["identifier"] = [{"system": identifier[0], "value": identifier[1]}]
    resource["effectivePeriod"] = {"start": instant(day_start_ms), "end": instant(day_end_ms)}
    resource["valueQuantity"] = {"value": round(total), "unit": "steps/day",
                                 "system": UCUM, "code": "1/(24.h)"}
    return _ordered(resource)


def feed_bundle(observation_resource: dict[str, Any], sender_oid: str,
                device: dict[str, Any]) -> dict[str, Any]:
    """The record-feed transaction as the guide's feed page describes it: the Device of
    the reading, created only if none with its identifier exists (``ifNoneExist`` in our
    OID's namespace), and one Observation that references it as ``Device/<id>`` and names
    our OID as its source. The Observation is also created conditionally on its
    identifier, so a resend after a crash creates nothing twice."""
    codings = observation_resource["code"].get("coding", [])
    if any(c.get("code") == "39156-5" for c in codings):
        raise ValueError("BMI is never fed: the medical record computes it")
    meta = {"source": f"urn:oid:{sender_oid}", **observation_resource.get("meta", {})}
    observation_resource = _ordered({**observation_resource, "meta": meta,
                                     "device": {"reference": f"Device/{device['id']}"}})
    entries = []
    for resource in (device, observation_resource):
        ident = next(i["value"] for i in resource["identifier"]
                     if i.get("system") == f"urn:oid:{sender_oid}")
        entries.append({
            "fullUrl": f"urn:uuid:{resource['id']}",
            "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"],
                        "ifNoneExist": f"identifier=urn:oid:{sender_oid}|{ident}"}})
    return {"resourceType": "Bundle", "meta": {"profile": [FEED_BUNDLE_PROFILE]},
            "type": "transaction", "entry": entries}


def device_resource(device_uuid: str, sender_oid: str | None, device_id: str, model: str,
                    serial: str, *, patient_ref: str | None = None,
                    phd: PhdFacts | None = None) -> dict[str, Any]:
    """A personal health device as the PHD profile describes it. With ``sender_oid`` its
    device id is an identifier in our OID's namespace (what the record's conditional
    create matches on); without, the read API names it by resource id alone. ``phd``
    carries what the profile requires beyond that (system id, manufacturer, model number,
    specialisation): facts of the device and its model, never made up here."""
    out: dict[str, Any] = {"resourceType": "Device", "id": device_uuid,
                           "meta": {"profile": [PHD_DEVICE_PROFILE]}}
    identifiers = []
    if phd:
        identifiers.append({"type": {"coding": [{"system": PHD_ID_TYPES, "code": "SYSID"}]},
                            "system": PHD_SYSTEM_ID, "value": phd.system_id})
    if sender_oid:
        identifiers.append({"system": f"urn:oid:{sender_oid}", "value": device_id})
    if identifiers:
        out["identifier"] = identifiers
    if phd:
        out["manufacturer"] = phd.manufacturer
    out["serialNumber"] = serial
    out["deviceName"] = [{"name": model, "type": "model-name"}]
    if phd:
        out["modelNumber"] = phd.model_number
        out["type"] = {"coding": [{"system": ISO_11073, "code": PHD_DEVICE_TYPE}],
                       "text": "MDC_MOC_VMS_MDS_SIMP"}
        out["specialization"] = [{"systemType": {"coding": [
            {"system": ISO_11073, "code": phd.specialization}]}}]
    if patient_ref:
        out["patient"] = {"reference": patient_ref}
    return out


@dataclass(frozen=True, slots=True)
class PhdFacts:
    """What the PHD profile requires of a Device beyond its id and serial number."""

    system_id: str  # EUI-64, eight hexadecimal bytes joined by dashes
    manufacturer: str
    model_number: str
    specialization: str  # ISO/IEEE 11073-10101 code of the device specialisation

    def __post_init__(self) -> None:
        if not EUI64.fullmatch(self.system_id):
            raise ValueError("a PHD system id is an EUI-64: eight hex bytes joined by dashes")
        if not (self.manufacturer and self.model_number and self.specialization.isdigit()):
            raise ValueError("manufacturer, model number and an 11073 specialisation code "
                             "are required")


def bundle(bundle_type: str, resources: Sequence[dict[str, Any]], *, total: int | None = None,
           links: Sequence[tuple[str, str]] = (), base: str | None = None) -> dict[str, Any]:
    """A searchset or collection Bundle of ``resources``. With ``base`` (the server's FHIR
    base URL) each fullUrl is the absolute URL the resource is read at, as R4 wants of a
    searchset; without, relative (``Observation/<id>``)."""
    out: dict[str, Any] = {"resourceType": "Bundle", "type": bundle_type}
    if total is not None:
        out["total"] = total
    if links:
        out["link"] = [{"relation": rel, "url": url} for rel, url in links]
    entries = []
    for r in resources:
        entry: dict[str, Any] = {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}" if base
                                 else f"{r['resourceType']}/{r['id']}", "resource": r}
        if bundle_type == "searchset":
            entry["search"] = {"mode": "match"}
        entries.append(entry)
    if entries:  # FHIR allows no empty array
        out["entry"] = entries
    return out


_KEY_ORDER = ("resourceType", "id", "meta", "extension", "identifier", "status", "category",
              "code",
              "subject", "effectiveDateTime", "effectivePeriod", "valueQuantity",
              "valueSampledData", "component", "device")


def _ordered(resource: dict[str, Any]) -> dict[str, Any]:
    """Keys in the order the specification lists them: stable golden files, easy reading."""
    return {k: resource[k] for k in _KEY_ORDER if k in resource}


BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition"
RPPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"  # the IDNPS system (national professional ids)


def idnps(rpps: str) -> dict[str, str]:
    """A professional's national identifier (IDNPS) from an RPPS number: under
    1.2.250.1.71.4.2.1 an RPPS is written with the type prefix "8" before its 11 digits."""
    return {"system": RPPS_SYSTEM, "value": f"8{rpps}"}

_AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_REST = "http://hl7.org/fhir/restful-interaction"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_NETWORK_TYPE = {"machine": "1", "ip": "2", "uri": "5"}
# The audit log's outcomes as AuditEvent.outcome: success, minor failure (the request was
# refused), serious failure; an outcome not listed here is a serious failure.
_OUTCOMES = {"ok": "0", "granted": "0", "revoked": "0", "paired": "0", "sent": "0",
             "invited": "0",
             "refused": "4", "throttled": "4", "failed": "8"}
# What the audit log calls an action -> (BALP profile, restful interaction, FHIR action).
# An export (GDPR access and portability) has no BALP profile: it is DICOM's 110106 Export.
_BALP_ACTIONS = {
    "read": ("IHE.BasicAudit.PatientRead", "read", "R"),
    "search": ("IHE.BasicAudit.PatientQuery", "search-type", "E"),
    "feed": ("IHE.BasicAudit.PatientCreate", "create", "C"),
}
# Every other access and change the audit log traces (issue 21: all of them are exported):
# action -> (type, subtype, FHIR action). Sign-in is DICOM's User Authentication (Login);
# changes to what the patient holds or allows (account, consents, devices) are DICOM's
# Patient Record event with the FHIR action saying which.
_PATIENT_RECORD = {"system": _DCM, "code": "110110", "display": "Patient Record"}
_OTHER_ACTIONS: dict[str, tuple[dict[str, str], dict[str, str] | None, str]] = {
    "login": ({"system": _DCM, "code": "110114", "display": "User Authentication"},
              {"system": _DCM, "code": "110122", "display": "Login"}, "E"),
    "register": (_PATIENT_RECORD, None, "C"),
    "consent": (_PATIENT_RECORD, None, "U"),
    "device": (_PATIENT_RECORD, None, "U"),
    "erase": (_PATIENT_RECORD, None, "D"),
    "claim": (_PATIENT_RECORD, None, "U"),
    "dismiss": (_PATIENT_RECORD, None, "U"),
}

_RECIPIENT = {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
              "code": "IRCP", "display": "information recipient"}
_SOURCE = {"system": _DCM, "code": "110153", "display": "Source Role ID"}
_DESTINATION = {"system": _DCM, "code": "110152", "display": "Destination Role ID"}
MEDICAL_RECORD = "Mon espace santé"  # the record the feed writes to


def _agent(role: dict[str, str], who: dict[str, Any], requestor: bool,
           network: tuple[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": {"coding": [role]}, "who": who, "requestor": requestor}
    if network is not None:
        out["network"] = {"address": network[1], "type": _NETWORK_TYPE[network[0]]}
    return out


def audit_event(event_id: str, recorded_ms: int, action: str, outcome: str,
                actor_display: str, patient_ref: str, what: str, *, rpps: str | None = None,
                observer: str = "healthiot", recipient: str = MEDICAL_RECORD,
                server: tuple[str, str] | None = None,
                client: tuple[str, str] | None = None) -> dict[str, Any]:
    """One audit-log entry as an IHE BALP AuditEvent: who (a person by name, a clinician
    also by IDNPS), what (the patient and the resource, or the query), when, the outcome,
    and the two machines with their ``network`` (kind, address): ``server`` the FHIR base
    that answered, ``client`` the address that asked when it was recorded.

    BALP's roles: a read has the client as Destination (110152) and the server as Source
    (110153); a query and a create the other way round (the client is the Source of the
    request). A feed is a create by our feed (the client) into the medical record (the
    server); no person takes part. An export is DICOM's Export (110106) by the patient."""
    server = server or ("machine", observer)
    who: dict[str, Any] = {"display": actor_display}
    if rpps:
        who["identifier"] = idnps(rpps)
    if action == "feed":
        agents = [_agent(_SOURCE, {"display": actor_display}, True, client),
                  _agent(_DESTINATION, {"display": recipient}, False, ("machine", recipient))]
    else:
        client_role, server_role = ((_DESTINATION, _SOURCE) if action in ("read", "export")
                                    else (_SOURCE, _DESTINATION))
        agents = [_agent(_RECIPIENT, who, True),
                  _agent(client_role, {"display": f"application of {actor_display}"}, False,
                         client),
                  _agent(server_role, {"display": observer}, False, server)]
    patient = {"what": {"reference": patient_ref},
               "type": {"system": _ENTITY_TYPE, "code": "1", "display": "Person"},
               "role": {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"}}
    if action == "search":
        query = what.removeprefix("fhir/")
        data = {"type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": _OBJECT_ROLE, "code": "24", "display": "Query"},
                "description": query,
                "query": base64.b64encode(query.encode()).decode()}
    else:
        data = {"what": {"display": what},
                "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": _OBJECT_ROLE, "code": "4", "display": "Domain Resource"}}
    out: dict[str, Any] = {"resourceType": "AuditEvent", "id": event_id}
    if action == "export":
        out["type"] = {"system": _DCM, "code": "110106", "display": "Export"}
        out["action"] = "R"
    elif action not in _BALP_ACTIONS:
        kind, sub, fhir_action = _OTHER_ACTIONS.get(action, (_PATIENT_RECORD, None, "E"))
        out["type"] = kind
        if sub is not None:
            out["subtype"] = [sub]
        out["action"] = fhir_action
    else:
        profile, interaction, fhir_action = _BALP_ACTIONS[action]
        out["meta"] = {"profile": [f"{BALP}/{profile}"]}
        out["type"] = {"system": _AUDIT_TYPE, "code": "rest", "display": "RESTful Operation"}
        out["subtype"] = [{"system": _REST, "code": interaction}]
        out["action"] = fhir_action
    out |= {"recorded": instant(recorded_ms), "outcome": _OUTCOMES.get(outcome, "8")}
    if outcome != "ok":
        out["outcomeDesc"] = outcome  # the log's own word: granted, revoked, throttled...
    out |= {"agent": agents, "source": {"observer": {"display": observer}},
            "entity": [patient, data]}
    return out


def capability_statement(base_url: str, software_version: str) -> dict[str, Any]:
    """What the read API offers, as its ``metadata`` answer."""
    search = [{"name": "patient", "type": "reference"}, {"name": "code", "type": "token"},
              {"name": "category", "type": "token"}, {"name": "date", "type": "date"},
              {"name": "_count", "type": "number",
               "documentation": "0 for the total only; more than 200 is served as 200"},
              {"name": "_sort", "type": "string", "documentation": "date or -date (default)"},
              {"name": "_summary", "type": "token", "documentation": "count"},
              {"name": "_total", "type": "token", "documentation": "accurate adds the total "
               "to a page"}]
    return {
        "resourceType": "CapabilityStatement", "status": "active",
        "date": "2026-11-23", "kind": "instance", "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json"],
        "software": {"name": "healthiot", "version": software_version},
        "implementation": {"description": "healthiot clinician read API", "url": base_url},
        "rest": [{"mode": "server",
                  "documentation": "Search has no default date window: next links reach "
                                   "every shared Observation (keyset paging). Unknown "
                                   "parameters are ignored unless Prefer: handling=strict.",
                  "security": {"cors": False, "description":
                               "Bearer tokens of clinicians with two factors; every read "
                               "is checked against the patient's consent and audited."},
                  "resource": [
                      {"type": "Patient", "interaction": [{"code": "read"}]},
                      {"type": "Device", "supportedProfile": [PHD_DEVICE_PROFILE],
                       "interaction": [{"code": "read"}]},
                      {"type": "Observation",
                       "supportedProfile": [p for m in ANS_PROFILES if m != "steps_by_day"
                                            and (p := profile_url(m)) is not None],
                       "interaction": [{"code": "read"}, {"code": "search-type"}],
                       "searchParam": search}]}],
    }


def patient_resource(patient_id: str, *, person: tuple[str, str] | None = None,
                     active: bool = True) -> dict[str, Any]:
    """A patient as the read API shows them: our id as a URI identifier, and the national
    person identifier (oid, value) the patient's medical-record link gave, when there is
    one. No name or birth date: the app does not collect them. No profile is claimed (FR
    Core Patient wants more than we hold)."""
    identifiers = [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{patient_id}"}]
    if person is not None:
        identifiers.append({"system": f"urn:oid:{person[0]}", "value": person[1]})
    return {"resourceType": "Patient", "id": patient_id, "identifier": identifiers,
            "active": active}


def consent_resource(consent_id: str, patient_ref: str, active: bool, granted_ms: int,
                     expires_ms: int, data_from_ms: int, data_to_ms: int,
                     clinician_rpps: str | None, metrics: Sequence[str]) -> dict[str, Any]:
    """A patient's consent to a clinician as a FHIR Consent (privacy, permit) covering the
    named ``metrics``: LOINC-coded, or by name for one that LOINC has no code for."""
    actor: dict[str, Any] = {"role": {"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
        "code": "IRCP"}]}, "reference": {"display": "clinician"}}
    if clinician_rpps:
        actor["reference"] = {"identifier": idnps(clinician_rpps)}
    return {
        "resourceType": "Consent", "id": consent_id,
        "status": "active" if active else "inactive",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": LOINC, "code": "59284-0",
                                  "display": "Patient Consent"}]}],
        "patient": {"reference": patient_ref}, "dateTime": instant(granted_ms),
        # ppc-1 wants a policy or a policy rule: an opt-in the patient gave in the app.
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "OPTIN", "display": "opt-in"}]},
        "provision": {"type": "permit",
                      "period": {"start": instant(granted_ms), "end": instant(expires_ms)},
                      "actor": [actor],
                      "code": [_metric_concept(m) for m in metrics],
                      "dataPeriod": {"start": instant(data_from_ms),
                                     "end": instant(data_to_ms)}}}


# Sample quality flags (vitals.normalise.Flag) on an exported reading that carries any:
# one extension per flag, its code the flag's name.
QUALITY_EXTENSION = "https://healthiot.example/fhir/StructureDefinition/sample-quality"


def flagged(resource: dict[str, Any], flag_names: Sequence[str], doubtful: bool
            ) -> dict[str, Any]:
    """``resource`` (a one-reading Observation) with its sample's quality flags; a reading
    whose value is in doubt (waiting for review, out of every figure) is ``preliminary``."""
    out = dict(resource)
    out["extension"] = [*resource.get("extension", []),
                        *({"url": QUALITY_EXTENSION, "valueCode": name}
                          for name in flag_names)]
    if doubtful:
        out["status"] = "preliminary"
    out.pop("meta", None)  # a profile's fixed status may be final only: claim none
    return _ordered(out)


def feed_consent_resource(patient_ref: str, enabled: bool, updated_ms: int,
                          recipient: str = MEDICAL_RECORD) -> dict[str, Any]:
    """The patient's consent to feed their medical record as a FHIR Consent: an opt-in
    (ppc-1) permitting the record (the recipient) to receive their readings."""
    return {
        "resourceType": "Consent", "id": "record-feed",
        "status": "active" if enabled else "inactive",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": LOINC, "code": "59284-0",
                                  "display": "Patient Consent"}]}],
        "patient": {"reference": patient_ref}, "dateTime": instant(updated_ms),
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "OPTIN", "display": "opt-in"}]},
        "provision": {"type": "permit", "actor": [{"role": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
            "code": "IRCP"}]}, "reference": {"display": recipient}}]}}


_FEED_STATES = {"sent": "completed", "refused": "not-done", "pending": "in-progress"}


def feed_communication(entry_id: int, patient_ref: str, metric: str, measured_ms: int,
                       state: str, created_ms: int, sent_ms: int | None,
                       status_code: int | None, reason: str | None,
                       recipient: str = MEDICAL_RECORD) -> dict[str, Any]:
    """One reading of the feed's history as a Communication to the medical record: sent
    (completed), refused (not-done, with the record's reason) or still pending."""
    out: dict[str, Any] = {"resourceType": "Communication", "id": f"feed-{entry_id}",
                           "status": _FEED_STATES[state]}
    if state != "sent" and (reason or status_code):
        text = reason or f"HTTP {status_code}"
        out["statusReason"] = {"text": text if status_code is None
                               else f"{text} (HTTP {status_code})"}
    out["subject"] = {"reference": patient_ref}
    if sent_ms is not None:
        out["sent"] = instant(sent_ms)
    out["recipient"] = [{"display": recipient}]
    name = metric_named(metric).display if metric in _CATALOGUE else metric
    out["payload"] = [{"contentString": f"{name} measured at "
                                         f"{instant(measured_ms)}, queued at "
                                         f"{instant(created_ms)}"}]
    return out
