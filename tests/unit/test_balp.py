"""The access log as FHIR meets IHE BALP (issue 21): one check per profile (read, query,
create) and for the export, on the agents (user, client, server, with network), the entity
types and the query entity."""

from __future__ import annotations

import base64
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent

from vitals import fhir

T = 1_767_225_600_000
PATIENT = "Patient/6f1c2d3e-0000-4000-8000-000000000001"
SERVER = ("uri", "https://api.example/fhir")
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def _role(agent: dict[str, Any]) -> str:
    return str(agent["type"]["coding"][0]["code"])


def _by_role(event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {_role(a): a for a in event["agent"]}


def _entities(event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["role"]["code"]: e for e in event["entity"]}


def _common(event: dict[str, Any], profile: str, subtype: str, action: str) -> None:
    AuditEvent.model_validate(event)
    assert event["meta"]["profile"] == [f"{fhir.BALP}/IHE.BasicAudit.{profile}"]
    assert event["type"]["code"] == "rest" and event["action"] == action
    assert event["subtype"][0]["code"] == subtype
    patient = _entities(event)["1"]
    assert patient["what"]["reference"] == PATIENT
    assert patient["type"]["system"].endswith("audit-entity-type")
    assert patient["type"]["code"] == "1"
    assert all("type" in e for e in event["entity"])


def test_patient_read() -> None:
    event = fhir.audit_event("a", T, "read", "ok", "Dr A. Martin (physician)", PATIENT,
                             "fhir/Patient", rpps="10001234567", server=SERVER)
    _common(event, "PatientRead", "read", "R")
    agents = _by_role(event)
    assert agents["IRCP"]["who"]["identifier"]["value"] == "810001234567"
    assert agents["110152"]["requestor"] is False  # the client receives: Destination
    assert agents["110153"]["network"] == {"address": SERVER[1], "type": "5"}  # server
    assert _entities(event)["4"]["type"]["code"] == "2"


def test_patient_query_has_the_query_entity() -> None:
    event = fhir.audit_event("b", T, "search", "ok", "Dr A. Martin (physician)", PATIENT,
                             "fhir/Observation?code=8867-4", rpps="10001234567",
                             server=SERVER)
    _common(event, "PatientQuery", "search-type", "E")
    agents = _by_role(event)
    assert agents["110152"]["network"]["address"] == SERVER[1]  # the server: Destination
    assert "110153" in agents  # the client: Source
    query = _entities(event)["24"]
    assert base64.b64decode(query["query"]).decode() == "Observation?code=8867-4"
    assert query["type"]["code"] == "2"


def test_patient_create_by_the_feed_has_no_human_user() -> None:
    event = fhir.audit_event("c", T, "feed", "ok", "the feed to your medical record",
                             PATIENT, "record/body_weight")
    _common(event, "PatientCreate", "create", "C")
    agents = _by_role(event)
    assert set(agents) == {"110153", "110152"}
    assert agents["110153"]["requestor"] is True
    assert agents["110152"]["who"]["display"] == fhir.MEDICAL_RECORD
    assert "network" in agents["110152"]


def test_export() -> None:
    event = fhir.audit_event("d", T, "export", "ok", "you", PATIENT, "all", server=SERVER)
    AuditEvent.model_validate(event)
    assert event["type"] == {"system": DCM, "code": "110106", "display": "Export"}
    assert "meta" not in event  # BALP has no export profile: none is claimed
    assert _by_role(event)["110153"]["network"]["address"] == SERVER[1]


def test_the_client_network_is_the_address_that_asked() -> None:
    event = fhir.audit_event("e", T, "read", "ok", "Dr A. Martin (physician)", PATIENT,
                             "fhir/Patient", server=SERVER, client=("ip", "192.0.2.7"))
    assert _by_role(event)["110152"]["network"] == {"address": "192.0.2.7", "type": "2"}


def test_every_other_logged_action_is_an_audit_event_too() -> None:
    """Sign-ins, consents, devices, the account: each a valid AuditEvent with a DICOM type,
    the FHIR action that fits, the log's outcome word, and no BALP profile claimed."""
    expected = {"login": ("110114", "E"), "consent": ("110110", "U"),
                "device": ("110110", "U"), "register": ("110110", "C"),
                "erase": ("110110", "D"), "claim": ("110110", "U")}
    for action, (code, fhir_action) in expected.items():
        event = fhir.audit_event("f", T, action, "granted", "you", PATIENT, "consent/1",
                                 server=SERVER, client=("ip", "192.0.2.7"))
        AuditEvent.model_validate(event)
        assert (event["type"]["code"], event["action"]) == (code, fhir_action), action
        assert event["outcome"] == "0" and event["outcomeDesc"] == "granted"
        assert "meta" not in event
    refused = fhir.audit_event("g", T, "device", "throttled", "you", PATIENT, "devices/pair")
    assert refused["outcome"] == "4"
