"""FHIR resources: each validates with fhir.resources, and golden files pin the exact output.

Regenerate the golden files after a deliberate change with UPDATE_GOLDEN=1 and review the
diff like code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation

from vitals import fhir

GOLDEN = Path(__file__).parent.parent / "golden"
T = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PATIENT = "Patient/6f1c2d3e-0000-4000-8000-000000000001"
OID = "1.2.250.1.999.1"


def _golden(name: str, resource: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(resource, indent=2, ensure_ascii=False) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


def test_heart_rate_observation() -> None:
    obs = fhir.observation("hr-1", "heart_rate", PATIENT, T, 62.0,
                           device_ref="Device/watch-1", identifier=("urn:oid:" + OID, "hr-1"))
    Observation.model_validate(obs)
    assert obs["meta"]["profile"] == [
        f"{fhir.MESURES}/StructureDefinition/mesures-fr-observation-heartrate"]
    assert obs["category"][0]["coding"][0]["code"] == "vital-signs"
    assert obs["valueQuantity"] == {"value": 62.0, "unit": "/min",
                                    "system": fhir.UCUM, "code": "/min"}
    _golden("observation-heart-rate", obs)


def test_a_metric_without_an_ans_profile_claims_none() -> None:
    obs = fhir.observation("fat-1", "body_fat", PATIENT, T, 21.5)
    Observation.model_validate(obs)
    assert "meta" not in obs


def test_blood_pressure_panel() -> None:
    obs = fhir.blood_pressure("bp-1", PATIENT, T, 142.0, 91.0, device_ref="Device/cuff-1")
    Observation.model_validate(obs)
    assert [c["code"]["coding"][0]["code"] for c in obs["component"]] == ["8480-6", "8462-4"]
    _golden("observation-blood-pressure", obs)


def test_dense_series_as_sampled_data_marks_gaps() -> None:
    t = T + np.array([0, 1000, 3000], dtype=np.int64)
    obs = fhir.sampled("hr-s", "heart_rate", PATIENT, t, np.array([60.0, 61.5, 63.0]), 1000)
    Observation.model_validate(obs)
    assert "meta" not in obs  # the ANS heart-rate profile allows only valueQuantity
    assert fhir.sampled_values(obs["valueSampledData"]) == [60.0, 61.5, None, 63.0]
    # Integers from the origin by the device's resolution: the shortest text.
    assert obs["valueSampledData"]["data"] == "-20 -5 E 10"
    assert obs["effectivePeriod"] == {"start": "2026-01-01T00:00:00.000Z",
                                      "end": "2026-01-01T00:00:03.000Z"}
    _golden("observation-sampled", obs)
    with pytest.raises(ValueError, match="at least one"):
        fhir.sampled("x", "heart_rate", PATIENT, t[:0], np.array([]), 1000)


def test_feed_bundle_is_a_conditional_transaction() -> None:
    phd = fhir.PhdFacts("00-1B-C5-FF-FE-00-00-2A", "Example Medical", "GM-100", "528401")
    device = fhir.device_resource("0b7a9c1e-0000-4000-8000-000000000002", OID,
                                  "glucometer-1", "glucometer", "SN-1", phd=phd)
    Device.model_validate(device)
    subject = fhir.person_subject("1.2.250.1.213.1.4.10", "IDPE0123456789")
    obs = fhir.observation("0b7a9c1e-0000-4000-8000-000000000003", "blood_glucose", subject,
                           T, 104.0, identifier=("urn:oid:" + OID,
                                                 "0b7a9c1e-0000-4000-8000-000000000003"),
                           decimals=0)
    feed = fhir.feed_bundle(obs, OID, device)
    Bundle.model_validate(feed)
    assert feed["type"] == "transaction"
    assert [e["request"]["ifNoneExist"] for e in feed["entry"]] == [
        f"identifier=urn:oid:{OID}|glucometer-1",
        f"identifier=urn:oid:{OID}|0b7a9c1e-0000-4000-8000-000000000003"]
    assert obs["valueQuantity"]["unit"] == "mg/dL"
    _golden("feed-bundle", feed)


def test_glucose_carries_the_moment_of_measurement() -> None:
    """The glucose profile binds the moment to JDV-J157; a glucometer that does not know
    the meal context gets "other" (LA46-8) with a text saying so, never a guessed moment."""
    unknown = fhir.observation("g-1", "blood_glucose", PATIENT, T, 104.0)
    Observation.model_validate(unknown)
    assert unknown["extension"] == [{
        "url": f"{fhir.MESURES}/StructureDefinition/mesures-moment-of-measurement",
        "valueCodeableConcept": {
            "coding": [{"system": fhir.NOS_LOINC, "code": "LA46-8", "display": "Autre"}],
            "text": fhir.MOMENT_NOT_REPORTED}}]
    assert list(unknown)[:4] == ["resourceType", "id", "meta", "extension"]
    fasting = fhir.observation("g-2", "blood_glucose", PATIENT, T, 92.0, moment="fasting")
    Observation.model_validate(fasting)
    concept = fasting["extension"][0]["valueCodeableConcept"]
    assert concept == {"coding": [{"system": fhir.NOS_LOINC, "code": "53049-3",
                                   "display": "Glucose à jeun"}]}
    with pytest.raises(KeyError):
        fhir.observation("g-3", "blood_glucose", PATIENT, T, 92.0, moment="brunch")
    # Only glucose has the extension.
    assert "extension" not in fhir.observation("w", "body_weight", PATIENT, T, 70.0)


def test_an_rr_interval_has_no_loinc_code_rather_than_a_wrong_one() -> None:
    obs = fhir.observation("rr-1", "rr_interval", PATIENT, T, 812.0,
                           device_ref="Device/watch-1")
    Observation.model_validate(obs)
    assert obs["code"] == {"text": "RR interval"}  # 80404-7 is SDNN, not an interval
    assert obs["valueQuantity"]["code"] == "ms"


def test_bmi_is_never_fed() -> None:
    obs = fhir.observation("b", "body_weight", PATIENT, T, 70.0, identifier=("s", "b"))
    obs["code"]["coding"][0]["code"] = "39156-5"
    device = fhir.device_resource("d", OID, "scale-1", "scale", "SN-1")
    with pytest.raises(ValueError, match="BMI"):
        fhir.feed_bundle(obs, OID, device)


def test_searchset_bundle() -> None:
    obs = fhir.observation("hr-1", "heart_rate", PATIENT, T, 62.0)
    out = fhir.bundle("searchset", [obs], total=1, links=[("self", "https://x/fhir/Observation")])
    Bundle.model_validate(out)
    assert out["entry"][0]["fullUrl"] == "Observation/hr-1"


def test_balp_audit_event_for_a_clinician_read() -> None:
    from fhir.resources.R4B.auditevent import AuditEvent

    event = fhir.audit_event("ae-1", T, "search", "ok", "Dr A. Martin", PATIENT,
                             "Observation?code=8867-4", rpps="10001234567")
    AuditEvent.model_validate(event)
    assert event["meta"]["profile"] == [f"{fhir.BALP}/IHE.BasicAudit.PatientQuery"]
    assert event["agent"][0]["who"]["identifier"]["value"] == "810001234567"  # IDNPS
    assert fhir.audit_event("ae-2", T, "read", "refused", "x", PATIENT, "y")["outcome"] == "4"
    _golden("audit-event", event)


def test_a_feed_audit_event_has_the_feed_as_source_and_the_record_as_recipient() -> None:
    from fhir.resources.R4B.auditevent import AuditEvent

    event = fhir.audit_event("ae-3", T, "feed", "ok", "the feed to your medical record",
                             PATIENT, "record/body_weight")
    AuditEvent.model_validate(event)
    roles = [(a["type"]["coding"][0]["code"], a["who"]["display"], a["requestor"])
             for a in event["agent"]]
    assert roles == [("110153", "the feed to your medical record", True),
                     ("110152", fhir.MEDICAL_RECORD, False)]  # BALP Create: the server
    assert event["meta"]["profile"] == [f"{fhir.BALP}/IHE.BasicAudit.PatientCreate"]
    assert event["action"] == "C"


def test_a_consent_names_each_metric_even_without_a_loinc_code() -> None:
    from fhir.resources.R4B.consent import Consent

    consent = fhir.consent_resource("c-1", PATIENT, True, T, T + 1000, T - 1000, T, None,
                                    ["heart_rate", "rr_interval"])
    Consent.model_validate(consent)
    assert consent["provision"]["code"] == [
        {"coding": [{"system": fhir.LOINC, "code": "8867-4", "display": "Heart rate"}],
         "text": "Heart rate"},
        {"text": "RR interval"}]


def test_capability_statement() -> None:
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    cap = fhir.capability_statement("https://localhost/fhir", "0.1")
    CapabilityStatement.model_validate(cap)
    assert cap["fhirVersion"] == "4.0.1"
    _golden("capability-statement", cap)


def test_the_search_answer_for_a_fixed_data_set() -> None:
    import uuid

    from api.fhir_routes import observations
    from storage.segments import Samples

    def s(t: list[int], v: list[float]) -> Samples:
        return Samples(T + np.asarray(t, np.int64), np.asarray(v), np.zeros(len(t), np.uint8))

    patient = uuid.UUID("6f1c2d3e-0000-4000-8000-000000000001")
    found = observations(patient, device_id="watch-1", series={
        "heart_rate": s([0, 1000, 3_600_000], [61.0, 62.0, 70.0]),
        "steps": s([0, 20_000, 60_000], [10.0, 5.0, 7.0]),
        "body_weight": s([5000], [80.25]),
        "systolic_bp": s([7000], [121.0]),
        "diastolic_bp": s([7000], [79.0])})
    found.sort(key=lambda pair: (-pair[0], pair[1]["id"]))
    out = fhir.bundle("searchset", [r for _, r in found], total=len(found))
    Bundle.model_validate(out)
    steps = next(r for _, r in found if r["code"]["coding"][0]["code"] == "55423-8")
    assert fhir.sampled_values(steps["valueSampledData"]) == [15, 7]  # summed per minute
    assert {r["device"]["reference"] for _, r in found} == {"Device/watch-1"}
    _golden("observation-search", out)


def test_search_pages_are_sorted_before_anything_is_built() -> None:
    """The search sorts and pages cheap stubs (time, id) and builds only the page asked:
    each stub's time and id are those of the Observation it builds."""
    import uuid

    from api.fhir_routes import _stubs
    from storage.segments import Samples

    n = 3 * 3600
    t = T + np.arange(n, dtype=np.int64) * 1000
    series = {"heart_rate": Samples(t, np.full(n, 61.0), np.zeros(n, np.uint8)),
              "body_weight": Samples(t[:2], np.array([80.0, 80.1]), np.zeros(2, np.uint8))}
    patient = uuid.UUID("6f1c2d3e-0000-4000-8000-000000000001")
    stubs = _stubs(patient, series, "watch-1")
    assert len(stubs) == 3 + 2
    for stub in stubs:
        built = stub.build()
        assert built["id"] == stub.id
        start = built.get("effectiveDateTime") or built["effectivePeriod"]["start"]
        assert start == fhir.instant(stub.t)
