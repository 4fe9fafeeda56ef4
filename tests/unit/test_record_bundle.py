"""The feed's FHIR output against the ANS "Mesures de santé" guide: every resource passes the
checker written from the guide's FSH (tests/record_sim/profiles.py) and round-trips through
fhir.resources. One test per problem seen when the feed met a capture server (issue 20)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.observation import Observation

from tests.record_sim import profiles
from vitals import fhir

T = 1_767_225_600_000  # 2026-01-01T00:00:00Z
OID = "1.2.250.1.999.1"
# The person as the record knows them: the oid/IDPE pair of their authorisation.
PERSON = {"identifier": {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "IDPE0123456789"}}
DEVICE_UUID = "0b7a9c1e-0000-4000-8000-000000000002"


def _device() -> dict[str, Any]:
    phd = fhir.PhdFacts("00-1B-C5-FF-FE-00-00-2A", "Example Medical", "GM-100", "528401")
    return fhir.device_resource(DEVICE_UUID, OID, "glucometer-0a1b2c", "glucometer",
                                "GM-0042", phd=phd)


def _round_trip(bundle: dict[str, Any]) -> None:
    """Valid FHIR R4(B) for fhir.resources, and unchanged by a parse and a dump."""
    parsed = Bundle.model_validate(bundle)
    again = parsed.model_dump(mode="json", exclude_none=True)
    assert Bundle.model_validate(again) == parsed
    for entry in bundle["entry"]:
        model = Observation if entry["resource"]["resourceType"] == "Observation" else Device
        model.model_validate(entry["resource"])


def _issues(bundle: dict[str, Any]) -> list[str]:
    return [i.diagnostics for i in profiles.check_bundle(bundle, OID)]


@pytest.mark.parametrize(("metric", "value"), [
    ("heart_rate", 62.0), ("spo2", 97.0), ("body_temperature", 36.7),
    ("body_weight", 80.1), ("blood_glucose", 104.0)])
def test_each_fed_vital_sign_passes_its_profile(metric: str, value: float) -> None:
    obs = fhir.observation(str(uuid.uuid4()), metric, PERSON, T, value,
                           identifier=(f"urn:oid:{OID}", "r-1"), decimals=1)
    bundle = fhir.feed_bundle(obs, OID, _device())
    assert _issues(bundle) == []
    _round_trip(bundle)


def test_blood_pressure_and_steps_by_day_pass_their_profiles() -> None:
    bp = fhir.blood_pressure(str(uuid.uuid4()), PERSON, T, 123.010116, 81.4,
                             identifier=(f"urn:oid:{OID}", "bp-1"), decimals=0)
    steps = fhir.steps_by_day(str(uuid.uuid4()), PERSON, T, T + 86_400_000, 8421.0,
                              identifier=(f"urn:oid:{OID}", "steps-1"))
    for obs in (bp, steps):
        bundle = fhir.feed_bundle(obs, OID, _device())
        assert _issues(bundle) == []
        _round_trip(bundle)
    assert [c["valueQuantity"]["value"] for c in bp["component"]] == [123, 81]
    assert steps["valueQuantity"] == {"value": 8421, "unit": "steps/day",
                                      "system": fhir.UCUM, "code": "1/(24.h)"}


def test_the_observation_references_its_device_by_id() -> None:
    """Seen: ``urn:uuid:...``; the guide wants ``Device/<Device.id>`` (else 422)."""
    obs = fhir.observation("0b7a9c1e-0000-4000-8000-000000000003", "body_weight", PERSON, T,
                           80.1, identifier=(f"urn:oid:{OID}", "w-1"))
    bundle = fhir.feed_bundle(obs, OID, _device())
    device, observation = (e["resource"] for e in bundle["entry"])
    assert observation["device"] == {"reference": f"Device/{device['id']}"}
    broken = {**bundle, "entry": [bundle["entry"][0], {
        **bundle["entry"][1], "resource": {**observation,
                                           "device": {"reference": f"urn:uuid:{DEVICE_UUID}"}}}]}
    assert _issues(broken) == ["Observation and device not linked by id "
                               "(Observation.device.reference <-> Device.id)"]


def test_the_person_is_the_authorisations_identifier() -> None:
    """Seen: the INS under 1.2.250.1.213.1.4.8; the record wants the oid/IDPE pair bound
    to the authorisation (else 403)."""
    assert fhir.person_subject("1.2.250.1.213.1.4.10", "IDPE0123456789") == PERSON


def test_the_device_satisfies_the_phd_profile() -> None:
    """Seen: identifier, serial and name only. The PHD profile requires the system id
    (EUI-64), manufacturer, model number, type and specialisation."""
    device = _device()
    assert profiles.check_device(device) == []
    assert device["identifier"][0] == {
        "type": {"coding": [{"system": fhir.PHD_ID_TYPES, "code": "SYSID"}]},
        "system": fhir.PHD_SYSTEM_ID, "value": "00-1B-C5-FF-FE-00-00-2A"}
    bare = fhir.device_resource(DEVICE_UUID, OID, "glucometer-0a1b2c", "glucometer", "GM-42")
    assert len(profiles.check_device(bare)) == 5
    with pytest.raises(ValueError, match="EUI-64"):
        fhir.PhdFacts("GM-0042", "Example Medical", "GM-100", "528401")


def test_a_series_does_not_claim_a_profile_that_allows_only_single_values() -> None:
    """Seen: heart-rate and SpO2 SampledData claiming ANS profiles whose value[x] slicing
    is closed to Quantity."""
    t = T + np.array([0, 1000, 2000], dtype=np.int64)
    for metric in ("heart_rate", "spo2"):
        series = fhir.sampled("s-1", metric, "Patient/p", t, np.array([60.0, 61.0, 62.0]),
                              1000)
        assert "meta" not in series
        claimed = {**series, "meta": {"profile": [fhir.profile_url(metric)]},
                   "subject": PERSON}
        assert any("valueSampledData is not allowed" in i.diagnostics
                   for i in profiles.check_observation(claimed))


def test_glucose_is_coded_from_the_guides_value_sets() -> None:
    """Seen: LOINC 2339-0 (not in JDV-J154) and a moment coded with http://loinc.org where
    JDV-J157 draws from the NOS code system."""
    obs = fhir.observation("g-1", "blood_glucose", PERSON, T, 104.0)
    assert obs["code"]["coding"][0] == {"system": fhir.NOS_LOINC, "code": "2345-7",
                                        "display": "Glucose sanguin"}
    moment = obs["extension"][0]["valueCodeableConcept"]["coding"]
    assert moment == [{"system": fhir.NOS_LOINC, "code": "LA46-8", "display": "Autre"}]
    assert obs["category"][0]["coding"][0]["display"] == "vital-signs"
    assert profiles.check_observation(obs) == []


def test_no_internal_id_in_what_is_sent() -> None:
    """Seen: Observation.identifier held healthiot's internal patient UUID."""
    from api.record_feed import bundles_for
    from storage.segments import Samples

    patient = uuid.UUID("6f1c2d3e-0000-4000-8000-000000000001")
    samples = Samples(np.array([T], np.int64), np.array([80.1]), np.zeros(1, np.uint8))
    entries = bundles_for(patient, PERSON, OID, {"scale-1": {"body_weight": samples}},
                          {"scale-1": _device_info("scale-1", "scale")}, _models(),
                          {"scale-1": "00-1B-C5-FF-FE-00-00-2B"})
    assert entries
    for _ident, _metric, bundle in entries:
        assert str(patient) not in str(bundle)
        assert profiles.check_bundle(bundle, OID) == []


def test_converted_values_keep_the_devices_precision() -> None:
    """Seen: 123.010116 mm[Hg] and 36.722222 Cel from converted units."""
    temp = fhir.observation("t", "body_temperature", PERSON, T, 36.722222, decimals=1)
    assert temp["valueQuantity"]["value"] == 36.7
    bp = fhir.blood_pressure("b", PERSON, T, 123.010116, 80.99, decimals=0)
    assert [c["valueQuantity"]["value"] for c in bp["component"]] == [123, 81]


def _device_info(device_id: str, model: str) -> Any:
    from storage.device_info import DeviceInfo

    return DeviceInfo(device_id, model, "SN-1", None)


def _models() -> Any:
    from api.record_models import DeviceModel, ModelCatalogue

    return ModelCatalogue({"scale": DeviceModel("Example Medical", "SC-1", "528399",
                                                {"body_weight": 1})})
