"""What the medical-record feed knows of each device model: the facts the PHD Device
profile requires that our devices do not report (manufacturer, model number, 11073
specialisation), and which readings of the model are fed, with the model's precision.

Configured by the operator per model (a JSON file, setting ``record_feed_models_file``),
never guessed: a model absent from the file has none of its readings fed. Format::

    {"scale": {"manufacturer": "...", "model_number": "...", "specialization": "528399",
               "fed": {"body_weight": 1}}}

``fed`` maps a metric to the number of decimals the device measures it with;
``blood_pressure`` stands for the systolic/diastolic pair and ``steps`` for the day's total.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from vitals import fhir

# What the feed can send, each as the guide's profile for it wants: single readings, the
# blood-pressure panel, and steps as a daily total (the one aggregate the guide has).
FEEDABLE = frozenset({"heart_rate", "spo2", "body_temperature", "body_weight",
                      "blood_glucose", "blood_pressure", "steps"})


class ModelsError(ValueError):
    """The models file cannot be used; the message says where."""


@dataclass(frozen=True, slots=True)
class DeviceModel:
    manufacturer: str
    model_number: str
    specialization: str  # ISO/IEEE 11073-10101 code, e.g. 528399 for a weighing scale
    fed: Mapping[str, int]  # metric -> decimals of the device's precision

    def __post_init__(self) -> None:
        unknown = set(self.fed) - FEEDABLE
        if unknown:
            raise ModelsError(f"not feedable: {sorted(unknown)} (feedable: {sorted(FEEDABLE)})")
        if any(not isinstance(d, int) or not 0 <= d <= 6 for d in self.fed.values()):
            raise ModelsError("decimals are whole numbers from 0 to 6")
        # The same checks as a PHD Device: caught at start-up, not at the first reading.
        fhir.PhdFacts("00-00-00-00-00-00-00-00", self.manufacturer, self.model_number,
                      self.specialization)

    def phd(self, system_id: str) -> fhir.PhdFacts:
        return fhir.PhdFacts(system_id, self.manufacturer, self.model_number,
                             self.specialization)


@dataclass(frozen=True)
class ModelCatalogue:
    models: Mapping[str, DeviceModel]

    @classmethod
    def load(cls, path: Path) -> ModelCatalogue:
        """Read and check the models file; raises ModelsError."""
        try:
            raw = json.loads(path.read_text())
            return cls(MappingProxyType({
                name: DeviceModel(m["manufacturer"], m["model_number"],
                                  str(m["specialization"]), dict(m["fed"]))
                for name, m in raw.items()}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelsError(f"{path}: {exc}") from None

    def get(self, model: str) -> DeviceModel | None:
        return self.models.get(model)
