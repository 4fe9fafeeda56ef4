"""Which parts of an audit resource name a device (storage/device_refs.py)."""

from __future__ import annotations

import pytest

from storage.device_refs import DEVICE_SEGMENT


@pytest.mark.parametrize(("resource", "devices"), [
    ("device/watch-3f9c0a1b2c4d", ["watch-3f9c0a1b2c4d"]),
    ("device/scale-1/users/me", ["scale-1"]),
    ("device/scale-1/unclaimed/7f1c", ["scale-1"]),
    ("fhir/Device/watch-2", ["watch-2"]),
    ("devices/pair", []),
    ("devices", []),
    ("vitals/heart_rate", []),
    ("record/device_count", []),
    ("subdevice/x", []),
])
def test_device_segments_of_a_resource_are_found_and_nothing_else(
        resource: str, devices: list[str]) -> None:
    assert [m.group("id") for m in DEVICE_SEGMENT.finditer(resource)] == devices
