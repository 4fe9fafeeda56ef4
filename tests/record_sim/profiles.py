"""A checker for what the feed sends, written from the ANS "Mesures de santé" guide's FSH
(profiles, value sets, the feed Bundle) and its feed page's list of refusals, plus the HL7
PHD Device profile. It checks the key constraints: the profile claimed, required elements,
value type (closed value[x] slicing), codes from the bound value sets, the Bundle's slices
and the Observation-Device link. Each problem is an ``Issue`` with the refusal the record
gives for it, so the record simulator answers with the same words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MESURES = "https://interop.esante.gouv.fr/ig/fhir/mesures/StructureDefinition/"
BUNDLE_PROFILE = MESURES + "mesures-bundle-flux-alimentation"
PHD_DEVICE = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice"
LOINC = "http://loinc.org"
NOS_LOINC = "https://mos.esante.gouv.fr/NOS/TRE_A04-Loinc/FHIR/TRE-A04-Loinc"
TAASIP = "https://mos.esante.gouv.fr/NOS/TRE_R308-TAASIP/FHIR/TRE-R308-TAASIP"
CISP2 = "https://mos.esante.gouv.fr/NOS/TRE_R313-CISP2/FHIR/TRE-R313-CISP2"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ISO_11073 = "urn:iso:std:iso:11073:10101"
SYSID_SYSTEM = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680"
SYSID_TYPES = "http://hl7.org/fhir/uv/phd/CodeSystem/ContinuaDeviceIdentifiers"
MOMENT_URL = MESURES + "mesures-moment-of-measurement"
EUI64 = re.compile(r"[0-9A-F]{2}(-[0-9A-F]{2}){7}")
# The feed page's pattern for a Device's ifNoneExist.
IF_NONE_EXIST = re.compile(
    r"identifier=urn:oid:([0-9]+(\.[0-9]+)+)\|([a-zA-Z0-9]+(-[a-zA-Z0-9]+)+)")

# The Observation profiles the feed Bundle's observation slice allows.
ALLOWED = {MESURES + p for p in (
    "mesures-fr-observation-bmi", "mesures-fr-observation-bodyheight",
    "mesures-fr-observation-body-temperature", "mesures-fr-observation-body-weight",
    "mesures-fr-observation-bp", "mesures-fr-observation-heartrate",
    "mesures-observation-glucose", "mesures-observation-head-circumference",
    "mesures-observation-pain-severity", "mesures-observation-steps-by-day",
    "mesures-observation-waist-circumference", "mesures-fr-observation-oxygen-sat")}


@dataclass(frozen=True)
class Rule:
    codes: frozenset[tuple[str, str]]  # (system, code): one coding must be among them
    units: frozenset[str]  # UCUM codes accepted in valueQuantity (empty: components)
    fixed_category_display: bool = False  # category[VSCat].coding.display = "vital-signs"
    date_time_only: bool = False  # effective[x] only dateTime
    moment_required: bool = False


_L = lambda *codes: frozenset((LOINC, c) for c in codes)  # noqa: E731
RULES = {
    MESURES + "mesures-fr-observation-heartrate": Rule(_L("8867-4"), frozenset({"/min"})),
    MESURES + "mesures-fr-observation-oxygen-sat": Rule(
        _L("2708-6", "59408-5"), frozenset({"%"}), fixed_category_display=True),
    MESURES + "mesures-fr-observation-body-temperature": Rule(_L("8310-5"),
                                                              frozenset({"Cel"})),
    MESURES + "mesures-fr-observation-body-weight": Rule(_L("29463-7"), frozenset({"kg"})),
    MESURES + "mesures-fr-observation-bp": Rule(
        _L("85354-9"), frozenset(), fixed_category_display=True, date_time_only=True),
    # JDV-J154 (type of glucose) and JDV-J163 (units); the moment (JDV-J157) is mandatory
    # on the feed.
    MESURES + "mesures-observation-glucose": Rule(
        frozenset({(NOS_LOINC, "2345-7"), (NOS_LOINC, "4548-4"), (TAASIP, "MED-969"),
                   (TAASIP, "MED-972")}),
        frozenset({"mg/dL", "%"}), fixed_category_display=True, date_time_only=True,
        moment_required=True),
    MESURES + "mesures-observation-steps-by-day": Rule(_L("41950-7"),
                                                       frozenset({"1/(24.h)"})),
}
MOMENTS = frozenset({(NOS_LOINC, c) for c in ("16915-1", "53049-3", "88365-2", "LA11865-5",
                                              "LA46-8")} | {(CISP2, "A05")})
BP_COMPONENTS = ("8480-6", "8462-4")


@dataclass(frozen=True)
class Issue:
    message: str  # the record's refusal heading, e.g. "Observation resource not valid."
    code: str  # OperationOutcome issue type
    diagnostics: str


def _codings(concept: Any) -> list[tuple[str, str]]:
    if not isinstance(concept, dict):
        return []
    return [(c.get("system", ""), c.get("code", "")) for c in concept.get("coding", [])]


def check_observation(obs: dict[str, Any], root_oid: str | None = None) -> list[Issue]:
    """Problems of one Observation against the profile it claims."""
    bad = "Observation resource not valid."
    out: list[Issue] = []
    profiles = (obs.get("meta") or {}).get("profile") or []
    if not profiles:
        return [Issue(bad, "invalid", "Observation must provide meta.profile value.")]
    claimed = [p for p in profiles if p in ALLOWED]
    if not claimed:
        return [Issue(bad, "invalid", f"profile not accepted by the feed: {profiles}")]
    if claimed[0].endswith("mesures-fr-observation-bmi"):
        return [Issue(bad, "not-supported", "Bmi observation cannot be created.")]
    source = (obs.get("meta") or {}).get("source")
    if source is not None and root_oid is not None and not (
            source == f"urn:oid:{root_oid}" or source.startswith(f"urn:oid:{root_oid}.")):
        out.append(Issue(bad, "value", "Solution oid in Observation.meta.source does not "
                                       f"belong to root editor oid ({root_oid})."))
    rule = RULES.get(claimed[0])
    if rule is None:
        return [*out, Issue(bad, "not-supported", f"no rule for {claimed[0]}")]
    if obs.get("status") not in ("registered", "preliminary", "final", "amended",
                                 "corrected", "cancelled", "entered-in-error", "unknown"):
        out.append(Issue(bad, "required", "Observation.status is mandatory"))
    vscat = [c for cat in obs.get("category", []) for c in cat.get("coding", [])
             if c.get("system") == CATEGORY and c.get("code") == "vital-signs"]
    if not vscat:
        out.append(Issue(bad, "invalid", "Observation.category[VSCat] is mandatory"))
    elif rule.fixed_category_display and vscat[0].get("display") != "vital-signs":
        out.append(Issue(bad, "value", "Observation.category[VSCat].coding.display must be "
                                       "'vital-signs'"))
    if not set(_codings(obs.get("code"))) & rule.codes:
        out.append(Issue(bad, "code-invalid", f"Observation.code {_codings(obs.get('code'))}"
                                              " is not in the profile's value set"))
    subject = obs.get("subject") or {}
    ident = subject.get("identifier") or {}
    if not (ident.get("system") and ident.get("value")):
        out.append(Issue(bad, "invalid", "Observation.subject.identifier is mandatory."))
    if "effectiveDateTime" not in obs and (rule.date_time_only or "effectivePeriod" not in obs):
        out.append(Issue(bad, "invalid", "Observation.effective[x] is mandatory (dateTime"
                                         + (" only)" if rule.date_time_only else " or Period)")))
    others = [k for k in obs if k.startswith("value") and k != "valueQuantity"]
    if others:
        out.append(Issue(bad, "invalid", f"{others[0]} is not allowed: value[x] is only "
                                         "Quantity (closed slicing)"))
    if rule.units:
        out += _quantity(obs.get("valueQuantity"), rule.units, "Observation.valueQuantity")
    else:  # the blood-pressure panel: values in its two components
        if "valueQuantity" in obs:
            out.append(Issue(bad, "invalid", "the panel carries its values in components"))
        components = {c for comp in obs.get("component", [])
                      for s, c in _codings(comp.get("code")) if s == LOINC}
        if not set(BP_COMPONENTS) <= components:
            out.append(Issue(bad, "value", "Observation value quantity not provided."))
        for comp in obs.get("component", []):
            out += _quantity(comp.get("valueQuantity"), frozenset({"mm[Hg]"}),
                             "Observation.component.valueQuantity")
    moments = [e for e in obs.get("extension", []) if e.get("url") == MOMENT_URL]
    if rule.moment_required and not moments:
        out.append(Issue(bad, "incomplete", "Observation.extension.moment is mandatory."))
    for ext in moments:
        codings = _codings(ext.get("valueCodeableConcept"))
        if len(codings) != 1 or codings[0] not in MOMENTS:
            out.append(Issue(bad, "code-invalid", f"moment {codings} is not one coding "
                                                  "from JDV-J157"))
    return out


def _quantity(q: Any, units: frozenset[str], where: str) -> list[Issue]:
    bad = "Observation resource not valid."
    if not isinstance(q, dict) or "value" not in q:
        return [Issue(bad, "value", "Observation value quantity not provided.")]
    out = []
    if q.get("system") != UCUM or q.get("code") not in units:
        out.append(Issue(bad, "code-invalid", f"{where}: {q.get('system')}#{q.get('code')}"
                                              f" is not one of {sorted(units)}"))
    return out


def check_device(device: dict[str, Any]) -> list[Issue]:
    """Problems of a Device against the PHD profile: the system id (EUI-64, SYSID),
    manufacturer, model number, type and specialisation."""
    bad = "Device resource not valid."
    if PHD_DEVICE not in ((device.get("meta") or {}).get("profile") or []):
        return [Issue(bad, "invalid", "Device must provide meta.profile value.")]
    out = []
    sysid = [i for i in device.get("identifier", []) if i.get("system") == SYSID_SYSTEM
             and (SYSID_TYPES, "SYSID") in _codings(i.get("type"))]
    if not sysid or not EUI64.fullmatch(str(sysid[0].get("value", ""))):
        out.append(Issue(bad, "required", "Device.identifier[systemIdIdentifier] (EUI-64) "
                                          "is mandatory"))
    for name in ("manufacturer", "modelNumber"):
        if not device.get(name):
            out.append(Issue(bad, "required", f"Device.{name} is mandatory"))
    if (ISO_11073, "65573") not in _codings(device.get("type")):
        out.append(Issue(bad, "value", "Device.type must be 11073 MDC_MOC_VMS_MDS_SIMP"))
    specs = [s for s in device.get("specialization", [])
             if any(sys == ISO_11073 and code.isdigit()
                    for sys, code in _codings(s.get("systemType")))]
    if not specs:
        out.append(Issue(bad, "required", "Device.specialization (11073) is mandatory"))
    return out


def check_bundle(bundle: dict[str, Any], root_oid: str | None = None) -> list[Issue]:
    """Problems of a feed Bundle: structure, the Observation-Device link, then each
    resource against its profile."""
    structure = "Bundle not valid."
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return [Issue("Unprocessable Entity", "invalid", "No bundle provided.")]
    if bundle.get("type") != "transaction":
        return [Issue(structure, "invalid", "Bundle.type must be transaction")]
    out: list[Issue] = []
    observations, devices = [], []
    for entry in bundle.get("entry", []):
        resource, request = entry.get("resource") or {}, entry.get("request") or {}
        kind = resource.get("resourceType")
        if kind not in ("Observation", "Device") or request.get("method") != "POST" or \
                request.get("url") != kind:
            out.append(Issue(structure, "not-supported", f"Resource of type {kind} is not "
                                                         f"acceptable with method "
                                                         f"{request.get('method')}."))
        elif kind == "Observation":
            if not entry.get("fullUrl"):
                out.append(Issue(structure, "invalid", "the Observation entry needs a fullUrl"))
            observations.append(resource)
        else:
            if not IF_NONE_EXIST.fullmatch(str(request.get("ifNoneExist", ""))):
                out.append(Issue(structure, "invalid", "Device request must have a valid "
                                                       "ifNoneExist attribute"))
            devices.append(resource)
    if len(devices) != 1:
        out.append(Issue(structure, "invalid", "Bundle must contain one conditional creation "
                                               "of a device (POST + ifNoneExist)"))
    if len(observations) != 1:
        out.append(Issue(structure, "invalid", "Bundle must contain one observation "
                                               "creation (POST)"))
    if out:
        return out
    obs, device = observations[0], devices[0]
    link = "Observation and Device link not valid."
    reference = (obs.get("device") or {}).get("reference")
    if not reference:
        out.append(Issue(link, "invalid", "Observation.device.reference is mandatory."))
    elif reference != f"Device/{device.get('id')}":
        out.append(Issue(link, "invalid", "Observation and device not linked by id "
                                          "(Observation.device.reference <-> Device.id)"))
    return out + check_observation(obs, root_oid) + check_device(device)
