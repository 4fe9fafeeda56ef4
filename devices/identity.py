"""Device ids: what a certificate's CN and a topic segment may contain."""

from __future__ import annotations

import re
import secrets

MODELS = ("watch", "scale", "bp_cuff", "thermometer", "glucometer", "pulse_oximeter")
SERVICE_PREFIX = "svc-"  # service identities (the bridge); never issued to a device
_DEVICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")


def is_device_id(value: str) -> bool:
    """True when ``value`` can name a device: a topic segment without wildcards or '/'."""
    return bool(_DEVICE_ID.fullmatch(value)) and not value.startswith(SERVICE_PREFIX)


def is_service_id(value: str) -> bool:
    """True when ``value`` names a service identity (the bridge): same alphabet, svc- prefix."""
    return bool(_DEVICE_ID.fullmatch(value)) and value.startswith(SERVICE_PREFIX)


def owns_client_id(identity: str, client_id: str) -> bool:
    """True when ``identity`` (a certificate CN) may connect under ``client_id``: a device
    has one session, under its id (the devices' listener imposes it; renewal uses that
    session too)."""
    return client_id == identity


def new_device_id(model: str) -> str:
    """A fresh random device id such as ``watch-3f9c0a1b2c4d``."""
    if model not in MODELS:
        raise ValueError(f"unknown device model {model!r}")
    return f"{model.replace('_', '')}-{secrets.token_hex(6)}"
