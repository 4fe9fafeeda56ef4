"""Every FHIR resource we emit claims only profiles it meets (issue 21): each one built,
each claimed profile checked against its key constraints (value type, required elements,
bound codes, invariants), categories and grids that fit the metric."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import numpy as np
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from api import fhir_routes
from api.fhir_routes import observations
from storage.segments import Samples
from tests.record_sim import profiles
from vitals import fhir
from vitals.catalogue import METRICS

T = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PATIENT_ID = uuid.UUID("6f1c2d3e-0000-4000-8000-000000000001")
PATIENT = f"Patient/{PATIENT_ID}"
VITAL_SIGNS = {"heart_rate", "spo2", "body_temperature", "body_weight", "systolic_bp",
               "diastolic_bp", "blood_glucose"}
RPPS = "10001234567"


def _samples(t: list[int] | np.ndarray, v: float) -> Samples:
    t = np.asarray(t, np.int64) + T
    return Samples(t, np.full(len(t), v), np.zeros(len(t), np.uint8))


def _everything() -> list[dict[str, Any]]:
    """One of every Observation the read API and the export build."""
    series = {m: _samples([0, 60_000], 50.0) for m in METRICS}
    return [r for _, r in observations(PATIENT_ID, series, "watch-1")]


def _category(obs: dict[str, Any]) -> set[str]:
    return {c["code"] for cat in obs.get("category", []) for c in cat["coding"]}


def test_every_observation_meets_each_profile_it_claims() -> None:
    found = _everything()
    assert len(found) > 10
    for obs in found:
        Observation.model_validate(obs)
        claimed = (obs.get("meta") or {}).get("profile", [])
        for profile in claimed:
            assert profile in profiles.RULES, (obs["code"], profile)
        if claimed:
            # The read API names the subject by reference; the record's rule that it be an
            # identifier is the feed's (tests/unit/test_record_bundle.py).
            issues = [i for i in profiles.check_observation(obs)
                      if "subject.identifier" not in i.diagnostics]
            assert not issues, (obs["code"], issues)
        if "valueSampledData" in obs:
            assert not claimed, "a series claims a Quantity-only profile"


def test_vital_signs_category_only_where_it_belongs() -> None:
    for obs in _everything():
        text = obs["code"].get("text")
        metric = next(m for m in [*METRICS, "blood_pressure"]
                      if (METRICS[m].display if m in METRICS else "Blood pressure panel")
                      == text)
        assert ("vital-signs" in _category(obs)) == (
            metric in VITAL_SIGNS or metric == "blood_pressure"), metric


def test_spo2_is_pulse_oximetry_on_its_own_grid() -> None:
    obs = fhir.observation("o-1", "spo2", PATIENT, T, 97.0)
    codes = {(c["system"], c["code"]) for c in obs["code"]["coding"]}
    assert {(fhir.LOINC, "2708-6"), (fhir.LOINC, "59408-5")} <= codes
    minute = np.arange(60, dtype=np.int64) * 60_000  # a watch: one reading a minute
    series = [r for _, r in observations(PATIENT_ID, {"spo2": _samples(minute, 97.0)})]
    assert len(series) == 1
    data = series[0]["valueSampledData"]
    assert data["period"] == 60_000 and "E" not in data["data"].split()


def test_a_consent_meets_ppc_1_and_names_the_clinician_by_idnps() -> None:
    consent = fhir.consent_resource("c-1", PATIENT, True, T, T + 1000, T - 1000, T, RPPS,
                                    ["heart_rate"])
    Consent.model_validate(consent)
    assert consent.get("policy") or consent.get("policyRule"), "ppc-1"
    ident = consent["provision"]["actor"][0]["reference"]["identifier"]
    assert ident == {"system": fhir.RPPS_SYSTEM, "value": "8" + RPPS}


def test_an_audit_event_names_the_clinician_by_idnps() -> None:
    event = fhir.audit_event("ae-1", T, "read", "ok", "Dr A. Martin", PATIENT,
                             "Patient", rpps=RPPS)
    idents = [a["who"].get("identifier") for a in event["agent"]]
    assert {"system": fhir.RPPS_SYSTEM, "value": "8" + RPPS} in idents


def test_a_patient_is_more_than_an_id() -> None:
    patient = fhir.patient_resource(str(PATIENT_ID), person=("1.2.250.1.213.1.4.10",
                                                             "IDPE0123456789"))
    Patient.model_validate(patient)
    assert set(patient) > {"resourceType", "id", "active"}
    systems = {i["system"] for i in patient["identifier"]}
    assert systems == {"urn:ietf:rfc:3986", "urn:oid:1.2.250.1.213.1.4.10"}
    assert "meta" not in patient  # no profile claimed that it does not meet


def _beats(n: int, start: int = 0, rr: float = 857.3) -> tuple[np.ndarray, np.ndarray]:
    intervals = np.round(rr + np.sin(np.arange(n)) * 40, 1)
    return (T + start + np.round(np.cumsum(intervals)).astype(np.int64), intervals)


def test_rr_intervals_are_one_compact_series_outside_the_vital_signs() -> None:
    """An hour of RR intervals (a minute of beats every five) is one Observation: the
    intervals as SampledData in beat order, the runs of beats in an extension, no profile,
    no vital-signs category; the beat times and intervals come back exactly."""
    runs = [_beats(70, start=k * 300_000) for k in range(12)]
    t = np.concatenate([r[0] for r in runs])
    rr = np.concatenate([r[1] for r in runs])
    series = {"rr_interval": Samples(t, rr, np.zeros(len(t), np.uint8))}
    found = [r for _, r in observations(PATIENT_ID, series, "watch-1")]
    assert len(found) == 1
    obs = found[0]
    Observation.model_validate(obs)
    assert "meta" not in obs and "vital-signs" not in _category(obs)
    assert obs["code"] == {"text": "RR interval"}
    data = obs["valueSampledData"]
    assert data["origin"]["code"] == "ms" and data["factor"] == 0.1
    assert fhir.sampled_values(data) == rr.tolist()
    beats = fhir.rr_beat_times(obs)
    assert beats == t.tolist()  # exactly
    assert len(obs["valueSampledData"]["data"]) < 6 * len(t)  # about 5 bytes a beat


def test_dense_series_decode_to_their_values_with_the_fewest_characters() -> None:
    t = np.arange(3600, dtype=np.int64) * 1000
    bpm = np.round(62 + 10 * np.sin(np.arange(3600) / 300))
    hr = next(r for _, r in observations(PATIENT_ID, {"heart_rate": Samples(
        t + T, bpm, np.zeros(3600, np.uint8))}))
    assert fhir.sampled_values(hr["valueSampledData"]) == bpm.tolist()
    assert len(hr["valueSampledData"]["data"]) < 3 * 3600
    skin = fhir.sampled("s", "skin_temperature", PATIENT, T + np.array([0, 120_000]),
                        np.array([33.4, 33.5]), 60_000)
    assert fhir.sampled_values(skin["valueSampledData"]) == [33.4, None, 33.5]


def test_the_export_groups_series_by_day_under_ids_of_their_own() -> None:
    t = T + np.arange(0, 2 * 86_400_000, 60_000, dtype=np.int64)
    series = {"spo2": Samples(t, np.full(len(t), 97.0), np.zeros(len(t), np.uint8)),
              "sleep_duration": Samples(t, np.ones(len(t)), np.zeros(len(t), np.uint8))}
    daily = [r for _, r in observations(PATIENT_ID, series, "watch-1", fhir_routes.DAY_MS)]
    assert len(daily) == 4
    assert all(r["id"].split("-")[0] in ("m1d", "m10d") for r in daily)
    hourly = [r for _, r in observations(PATIENT_ID, series, "watch-1")]
    assert len(hourly) == 2 * 48 and not {r["id"] for r in hourly} & {r["id"] for r in daily}


def test_a_flagged_reading_claims_no_profile_and_names_its_flags() -> None:
    obs = fhir.observation("q-1", "heart_rate", PATIENT, T, 190.0)
    assert obs["meta"]["profile"]  # the ANS heart-rate profile, met by a final reading
    out = fhir.flagged(obs, ["hr-spike"], doubtful=True)
    Observation.model_validate(out)
    assert "meta" not in out and out["status"] == "preliminary"
    assert out["extension"] == [{"url": fhir.QUALITY_EXTENSION, "valueCode": "hr-spike"}]


def test_an_hourly_rr_series_is_read_back_by_its_id() -> None:
    t, rr = _beats(70)
    found = observations(PATIENT_ID, {"rr_interval": Samples(t, rr, np.zeros(70, np.uint8))})
    address = fhir_routes._address(found[0][1]["id"])
    assert address is not None and address.metrics == ("rr_interval",)
    assert address.end - address.start == dt.timedelta(hours=1)
